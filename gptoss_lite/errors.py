"""The one exception type the user sees.

Anything wrong with what the user gave us (a path, a config, a profile, a prompt) raises
`GptossError` with a single line that says what is wrong and what to do. The CLI prints that
line and exits non-zero; everything else is a bug and keeps its traceback.
"""


class GptossError(Exception):
    """A problem with the user's input, explained in one line."""
