"""gptoss-lite: run gpt-oss with MXFP4 experts on a 24 GB GPU.

import gptoss_lite
runner = gptoss_lite.load("openai/gpt-oss-20b")   # or a local checkpoint folder
logits = runner.logits(token_ids)                  # float32 [len(token_ids), vocab]
for token in runner.generate(token_ids, max_new_tokens=64, temperature=0): ...

How a model is opened is one `ModelOptions`, how tokens are drawn one `Sampling`.
"""

from .engine.options import ModelOptions
from .engine.runner import Runner, load
from .engine.sampling import Sampling
from .errors import GptossError

__all__ = ["GptossError", "ModelOptions", "Runner", "Sampling", "load"]
