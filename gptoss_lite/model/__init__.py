"""The math of gpt-oss, torch only, importing nothing of the project but `config` and `errors`.

Read it in the order of the forward pass: `rope` (YaRN rotary positions) → `attention` (GQA with
learned sinks and sliding windows) → `mxfp4` (the packed expert format) and `moe` (routing and
the clamped SwiGLU experts) → `kv_quant` (the KV-cache storage formats) and `cache` (full
buffers, sliding rings, the pool of sequences) → `transformer` (the blocks assembled, and the
`Kernels` a model is built with).
"""
