"""Hardware profiles: how much memory a run may use on a device, read from a TOML file.

A profile names a device kind, the card's memory, the budget the run must stay within (tensors plus
a reserve for the CUDA context, allocator slack and, where the budget is the whole card, the
desktop), the KV-cache dtypes (one for K and V, or a `{k = ..., v = ...}` table), the prefill
chunk, where the embedding table lives and a context cap. Built-in profiles live in the top-level
`profiles/` folder of a checkout; a non-editable install carries a copy inside the package
(`gptoss_lite/_profiles`, copied by setup.py at build time). `load_profile("auto")` matches the
local CUDA card, or falls back to the `cpu` profile sized to the host's RAM; `host_room` is what
that sizing leaves a GPU run's host-side tensors. `cpu_experts` (optional) keeps the experts of
that many leading layers (or "all") in host RAM; left out, the planner decides. Every bad key or
value raises a one-line `GptossError`. `resolve_profile` is how every entry point turns its
--profile, --device and --budget into one profile, and `run_device` the device a run on it uses,
checked to exist on this machine.
"""

from __future__ import annotations

import math
import os
import re
import sys
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import GptossError
from ..model.kv_quant import KV_FORMATS, UNQUANTIZED, KVDtypes
from ..units import GIB

if TYPE_CHECKING:
    import torch

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEVICES = ("cuda", "cpu")
EMBEDDING_PLACES = ("host", "device")
REQUIRED_KEYS = (
    "device",
    "memory_gib",
    "reserve_gib",
    "budget_gib",
    "kv_cache_dtype",
    "prefill_chunk",
    "embedding",
    "max_context",
)
OPTIONAL_KEYS = ("description", "gpu", "cpu_experts")
AUTO_MEMORY_TOLERANCE = 0.1  # a card matches a profile within 10% of its memory


@dataclass(frozen=True)
class Profile:
    """One device's memory budget and the run settings that depend on it."""

    name: str
    device: str  # "cuda" or "cpu"
    memory_bytes: int  # the card's (or host's) memory
    reserve_bytes: int  # part of the budget no tensor gets: CUDA context, allocator, desktop
    budget_bytes: int  # the run stays within this, reserve included
    kv_cache_dtype: KVDtypes  # storage of the K and the V cache
    prefill_chunk: int  # prompt tokens per forward pass
    embedding: str  # "host" (row gather, saves VRAM) or "device"
    max_context: int  # cap on the context the planner picks by itself
    gpu: str = ""  # substring of the CUDA device name, for --profile auto
    description: str = ""
    cpu_experts: int | str | None = None  # layers whose experts stay in host RAM, or "all";
    # None: as few as the plan needs
    source: str = ""  # the file it came from

    @property
    def embedding_on_device(self) -> bool:
        """True when the embedding table counts against the budget."""
        return self.device == "cpu" or self.embedding == "device"


def load_profile(name_or_path: str | Path) -> Profile:
    """A built-in profile by name, a profile file by path, or "auto" for this machine.

    The built-in `cpu` profile is always sized to this host's RAM: a budget larger than the
    machine would plan contexts that cannot be held.
    """
    if isinstance(name_or_path, Path):
        return read_profile(name_or_path)
    if name_or_path == "auto":
        return auto_profile()
    if name_or_path == "cpu":
        return cpu_profile(host_memory_bytes())
    if name_or_path.endswith(".toml") or "/" in name_or_path or os.sep in name_or_path:
        return read_profile(Path(name_or_path))
    known = builtin_profiles()
    if name_or_path not in known:
        raise GptossError(
            f"unknown profile {name_or_path!r}; known: {', '.join(sorted(known))}, auto "
            "(or pass a path to a .toml file)"
        )
    return read_profile(known[name_or_path])


def resolve_profile(
    profile: str | Path | Profile | None = None,
    device: str | torch.device | None = None,
    budget_gib: float | None = None,
) -> Profile:
    """The profile a run uses: `profile` as given (a name, a file, "auto" or a `Profile`), by
    default this machine's ("auto"; with a cpu `device`, the cpu profile), with its budget set
    to `budget_gib` when given."""
    if not isinstance(profile, Profile):
        if profile is None and device is not None and _device_type(device) == "cpu":
            profile = "cpu"
        profile = load_profile(profile or "auto")
    return profile if budget_gib is None else with_budget(profile, budget_gib)


def with_budget(profile: Profile, budget_gib: float) -> Profile:
    """`profile` with its budget set to `budget_gib` GiB: above its reserve, at most its memory."""
    budget = round(budget_gib * GIB) if math.isfinite(budget_gib) else 0
    memory = profile.memory_bytes / GIB
    if not profile.reserve_bytes < budget <= profile.memory_bytes:
        raise GptossError(
            f"--budget {budget_gib:g}: profile {profile.name} has {memory:.3g} GiB and reserves "
            f"{profile.reserve_bytes / GIB:.3g}; give a budget above the reserve, at most "
            f"{memory:.3g}"
        )
    return replace(profile, budget_bytes=budget)


def run_device(profile: Profile, device: str | torch.device | None = None) -> torch.device:
    """The torch device a run on `profile` uses (`device`, else the profile's), checked to exist
    on this machine with a one-line `GptossError`."""
    import torch

    if device is None and profile.device == "cuda" and not torch.cuda.is_available():
        raise GptossError(
            "this profile runs on CUDA and no CUDA device is available; "
            "use --profile cpu (or --device cpu)"
        )
    return check_device(profile.device if device is None else device)


def check_device(name: str | torch.device) -> torch.device:
    """`name` as a torch device of this machine (a bare "cuda" becomes the current CUDA device),
    or a one-line `GptossError` naming the --device."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise GptossError(f"--device {name}: not a device; use cpu, cuda or cuda:N") from None
    if device.type not in DEVICES:
        raise GptossError(f"--device {name}: gptoss-lite runs on cpu or cuda")
    if device.type == "cpu":
        return device
    if not torch.cuda.is_available():
        raise GptossError(f"--device {name}: no CUDA device is available here; use cpu")
    index = torch.cuda.current_device() if device.index is None else device.index
    if index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise GptossError(f"--device {name}: this machine has {count} CUDA device(s)")
    return torch.device("cuda", index)


def _device_type(device: str | torch.device) -> str:
    return str(device).split(":")[0]


def builtin_profiles() -> dict[str, Path]:
    """Built-in profile names and their files."""
    return {path.stem: path for path in sorted(_profile_dir().glob("*.toml"))}


def _profile_dir() -> Path:
    packaged = Path(str(resources.files("gptoss_lite") / "_profiles"))
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "profiles"


def read_profile(path: Path) -> Profile:
    """Read and validate one profile file; the profile is named after the file."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise GptossError(f"profile file {path} not found") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise GptossError(f"profile {path}: cannot read it: {exc}") from None
    return _from_dict(data, path)


def _from_dict(data: dict, path: Path) -> Profile:
    def fail(key: str, why: str) -> GptossError:
        return GptossError(f"profile {path}: {key} {why}")

    known = REQUIRED_KEYS + OPTIONAL_KEYS
    for key in data:
        if key not in known:
            raise fail(key, f"is not a profile key (known: {', '.join(known)})")
    for key in REQUIRED_KEYS:
        if key not in data:
            raise fail(key, "is missing")
    memory, budget, reserve = (
        _number(data, k, fail) for k in ("memory_gib", "budget_gib", "reserve_gib")
    )
    if memory <= 0:
        raise fail("memory_gib", f"must be positive, got {memory}")
    if budget <= 0:
        raise fail("budget_gib", f"must be positive, got {budget}")
    if reserve < 0:
        raise fail("reserve_gib", f"must be at least 0, got {reserve}")
    if budget > memory:
        raise fail("budget_gib", f"({budget}) exceeds memory_gib ({memory})")
    if reserve >= budget:
        raise fail("reserve_gib", f"({reserve}) leaves nothing of budget_gib ({budget})")
    return Profile(
        name=path.stem,
        device=_choice(data, "device", DEVICES, fail),
        memory_bytes=round(memory * GIB),
        reserve_bytes=round(reserve * GIB),
        budget_bytes=round(budget * GIB),
        kv_cache_dtype=_kv_dtypes(data, fail),
        prefill_chunk=_positive_int(data, "prefill_chunk", fail),
        embedding=_choice(data, "embedding", EMBEDDING_PLACES, fail),
        max_context=_positive_int(data, "max_context", fail),
        gpu=_text(data, "gpu", fail),
        description=_text(data, "description", fail),
        cpu_experts=_layers(data, "cpu_experts", fail),
        source=str(path),
    )


def _number(data: dict, key: str, fail) -> float:
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise fail(key, f"must be a number, got {value!r}")
    return float(value)


def _positive_int(data: dict, key: str, fail) -> int:
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise fail(key, f"must be a positive integer, got {value!r}")
    return value


def _layers(data: dict, key: str, fail) -> int | str | None:
    value = data.get(key)
    if value is None or value == "all":
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise fail(key, f"must be a number of layers or 'all', got {value!r}")
    return value


def _choice(data: dict, key: str, allowed: tuple[str, ...], fail) -> str:
    value = data[key]
    if value not in allowed:
        raise fail(key, f"must be one of {', '.join(allowed)}; got {value!r}")
    return value


def _kv_dtypes(data: dict, fail) -> KVDtypes:
    value = data["kv_cache_dtype"]
    if isinstance(value, dict):
        if set(value) != {"k", "v"}:
            raise fail("kv_cache_dtype", f"as a table needs exactly the keys k and v, got {value}")
        return KVDtypes(*(_choice(value, k, KV_FORMATS, _within(fail)) for k in ("k", "v")))
    kind = _choice(data, "kv_cache_dtype", KV_FORMATS, fail)
    return KVDtypes(kind, kind)


def _within(fail):
    return lambda key, why: fail(f"kv_cache_dtype.{key}", why)


def _text(data: dict, key: str, fail) -> str:
    value = data.get(key, "")
    if not isinstance(value, str):
        raise fail(key, f"must be a string, got {value!r}")
    return value


# ------------------------------------------------------------------ --profile auto


def auto_profile() -> Profile:
    """The profile for this machine's first CUDA card, or `cpu` sized to the host's RAM."""
    import torch

    if not torch.cuda.is_available():
        return cpu_profile(host_memory_bytes())
    name = torch.cuda.get_device_properties(0).name
    free, total = torch.cuda.mem_get_info(0)
    profiles = [read_profile(path) for path in builtin_profiles().values()]
    profile = match_gpu(name, total, profiles) or generic_gpu_profile(name, total)
    # What other processes (and our CUDA context) hold now is not ours to plan with.
    budget = min(profile.budget_bytes, free)
    if budget <= profile.reserve_bytes:
        raise GptossError(f"{name} has only {free / GIB:.2f} GiB free; close what is using it")
    return replace(profile, budget_bytes=budget)


def match_gpu(name: str, total_bytes: int, profiles: list[Profile]) -> Profile | None:
    """The cuda profile whose `gpu` is in the device name and whose memory is within 10%."""
    for profile in profiles:
        if profile.device != "cuda" or not profile.gpu:
            continue
        off_by = abs(profile.memory_bytes - total_bytes) / profile.memory_bytes
        if profile.gpu.lower() in name.lower() and off_by <= AUTO_MEMORY_TOLERANCE:
            return profile
    return None


def generic_gpu_profile(name: str, total_bytes: int) -> Profile:
    """A profile for a card no built-in profile describes: the whole card, 1.5 GiB reserved."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return Profile(
        name=f"auto-{slug}",
        device="cuda",
        memory_bytes=total_bytes,
        reserve_bytes=int(1.5 * GIB),
        budget_bytes=total_bytes,
        kv_cache_dtype=UNQUANTIZED,
        prefill_chunk=1024,
        embedding="host",
        max_context=131072,
        gpu=name,
        description=f"{name} (detected, no built-in profile)",
        source="auto",
    )


def cpu_profile(memory_bytes: int) -> Profile:
    """The built-in `cpu` profile for a host with this much RAM, keeping its OS headroom."""
    profile = _sized_cpu_profile(memory_bytes)
    if profile.budget_bytes <= profile.reserve_bytes:
        headroom = profile.memory_bytes - profile.budget_bytes
        raise GptossError(
            f"this host has {memory_bytes / GIB:.1f} GiB of RAM; the cpu profile keeps "
            f"{headroom / GIB:.1f} GiB for the system and needs more than that"
        )
    return profile


def host_room(memory_bytes: int) -> int:
    """Bytes of tensors a host with this much RAM can hold beside a run: what the `cpu` profile
    sized to it leaves them (its budget less its reserve: the system's headroom and the Python
    and torch runtime stay free), at least 0. A GPU run's host-side tensors must fit in it."""
    profile = _sized_cpu_profile(memory_bytes)
    return max(0, profile.budget_bytes - profile.reserve_bytes)


def _sized_cpu_profile(memory_bytes: int) -> Profile:
    base = read_profile(builtin_profiles()["cpu"])
    budget = memory_bytes - (base.memory_bytes - base.budget_bytes)
    return replace(base, memory_bytes=memory_bytes, budget_bytes=budget, source="auto")


def host_memory_bytes() -> int:
    """Physical RAM of this host."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        raise GptossError("cannot read this host's RAM; pass --profile cpu or a .toml") from None
