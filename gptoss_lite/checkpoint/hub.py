"""Finding the model: a local folder, or a Hugging Face Hub repo downloaded on demand.

From the Hub only the files this runner reads are fetched (the HF-layout shards, their index,
the configs and the tokenizer files); the repo's `original/` and `metal/` copies would double
the download. huggingface_hub shows progress bars and resumes interrupted downloads. Offline
(`HF_HUB_OFFLINE=1`, or no network) a repo comes from the Hugging Face cache, and an error names
the cache folder looked in and the command that fills it.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import GptossError
from .safetensors import INDEX

# Small files, fetched first so the memory plan can be shown before the weights download.
METADATA_FILES = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
]
WEIGHT_FILES = [INDEX, "model.safetensors", "model-*.safetensors"]


def resolve_model(model: str | Path, *, weights: bool = True, endpoint: str | None = None) -> Path:
    """A local folder holding the checkpoint of `model` (a path or a Hub repo id).

    With `weights=False` a Hub repo is fetched without its weights (configs and tokenizer only).
    """
    path = Path(model).expanduser()
    if path.exists():
        return path
    if str(model).startswith((".", "/", "~")) or str(model).count("/") != 1:
        raise GptossError(f"model {model!r} is neither a local folder nor a Hub repo id")
    files = METADATA_FILES + WEIGHT_FILES if weights else METADATA_FILES
    return download(str(model), files, endpoint=endpoint)


def download(repo_id: str, files: list[str], *, endpoint: str | None = None) -> Path:
    """The local snapshot of the `files` (glob patterns) of Hub repo `repo_id`, with progress."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=files, endpoint=endpoint))
    except LocalEntryNotFoundError:
        cache = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
        why = (
            "HF_HUB_OFFLINE=1 is set"
            if constants.HF_HUB_OFFLINE
            else "the Hugging Face Hub is unreachable"
        )
        raise GptossError(
            f"cannot download {repo_id}: {why} and no complete copy is cached in {cache}; "
            f"download it first with `hf download {repo_id}`, or pass a local checkpoint folder "
            "(--model PATH)"
        ) from None
    except HfHubHTTPError as exc:
        reason = str(exc).splitlines()[0]
        raise GptossError(
            f"cannot download {repo_id} from the Hugging Face Hub ({reason}); "
            "check the repo id, or pass a local checkpoint folder (--model PATH)"
        ) from None
    except OSError as exc:
        raise GptossError(
            f"cannot download {repo_id}: {exc.__class__.__name__}: {exc}; "
            "pass a local checkpoint folder instead (--model PATH)"
        ) from None
