"""`gptoss-lite serve`: the OpenAI-compatible HTTP server (`app`), its queue and worker (`service`,
`worker`), the three APIs (`chat_api`, `responses_api`, `completions_api`) and their errors."""
