"""gptoss-lite: run gpt-oss with MXFP4 experts on a 24 GB GPU."""

from .errors import GptossError

__all__ = ["GptossError"]
