"""Profiles: built-in files load, each bad value is one clear line, auto-detection picks right."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from gptoss_lite import GptossError
from gptoss_lite.memory import profiles as profiles
from gptoss_lite.memory.profiles import GIB, load_profile, match_gpu, read_profile
from gptoss_lite.model.kv_quant import KVDtypes

REPO = Path(__file__).resolve().parent.parent
GOOD = {
    "description": "a test card",
    "device": "cuda",
    "gpu": "Test GPU",
    "memory_gib": 24,
    "budget_gib": 14.0,
    "reserve_gib": 1.0,
    "kv_cache_dtype": "bf16",
    "prefill_chunk": 512,
    "embedding": "host",
    "max_context": 131072,
}


def write_profile(tmp_path: Path, **changes) -> Path:
    """A profile file: GOOD with `changes` (a value of None drops the key)."""
    data = {k: v for k, v in {**GOOD, **changes}.items() if v is not None}
    path = tmp_path / "mycard.toml"
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in data.items()))
    return path


def test_builtin_profiles_all_load():
    names = set(profiles.builtin_profiles())
    wanted = {
        "rtx4090",
        "rtx3090",
        "rtx4080-16gb",
        "rtx4060ti-16gb",
        "rtx3060-12gb",
        "a100-40gb",
        "h100-80gb",
        "h200",
        "cpu",
    }
    assert wanted <= names
    for name in names:
        p = load_profile(name)
        assert p.name == name and p.reserve_bytes < p.budget_bytes <= p.memory_bytes


def test_rtx4090_values():
    p = load_profile("rtx4090")
    assert (p.device, p.kv_cache_dtype, p.embedding) == ("cuda", KVDtypes("bf16", "bf16"), "host")
    assert p.memory_bytes == 24 * GIB and p.budget_bytes == 14 * GIB
    assert not p.embedding_on_device


def test_user_profile_by_path(tmp_path):
    p = load_profile(str(write_profile(tmp_path)))
    assert p.name == "mycard" and p.budget_bytes == 14 * GIB and p.prefill_chunk == 512
    assert p.source == str(tmp_path / "mycard.toml")
    assert load_profile(tmp_path / "mycard.toml") == p


def test_optional_keys_may_be_left_out(tmp_path):
    p = read_profile(write_profile(tmp_path, gpu=None, description=None))
    assert p.gpu == "" and p.description == "" and p.cpu_experts is None


def test_cpu_experts_key(tmp_path):
    assert read_profile(write_profile(tmp_path, cpu_experts=3)).cpu_experts == 3
    assert read_profile(write_profile(tmp_path, cpu_experts="all")).cpu_experts == "all"


@pytest.mark.parametrize(
    ("changes", "key", "why"),
    [
        ({"colour": "red"}, "colour", "is not a profile key"),
        ({"budget_gib": None}, "budget_gib", "is missing"),
        ({"budget_gib": 30}, "budget_gib", "exceeds memory_gib"),
        ({"reserve_gib": -1}, "reserve_gib", "must be at least 0"),
        ({"reserve_gib": 14}, "reserve_gib", "leaves nothing"),
        ({"memory_gib": 0}, "memory_gib", "must be positive"),
        ({"budget_gib": "lots"}, "budget_gib", "must be a number"),
        ({"memory_gib": True}, "memory_gib", "must be a number"),
        ({"prefill_chunk": 0}, "prefill_chunk", "must be a positive integer"),
        ({"prefill_chunk": 512.5}, "prefill_chunk", "must be a positive integer"),
        ({"max_context": -4096}, "max_context", "must be a positive integer"),
        ({"device": "tpu"}, "device", "must be one of cuda, cpu"),
        ({"embedding": "disk"}, "embedding", "must be one of host, device"),
        ({"kv_cache_dtype": "q4"}, "kv_cache_dtype", "must be one of bf16, q8, fp8"),
        ({"gpu": 4090}, "gpu", "must be a string"),
        ({"cpu_experts": -1}, "cpu_experts", "must be a number of layers or 'all'"),
        ({"cpu_experts": "some"}, "cpu_experts", "must be a number of layers or 'all'"),
    ],
)
def test_bad_profile_is_one_clear_line(tmp_path, changes, key, why):
    path = write_profile(tmp_path, **changes)
    with pytest.raises(GptossError) as err:
        load_profile(str(path))
    message = str(err.value)
    assert message.startswith(f"profile {path}: {key} ") and why in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "value, expected",
    [('"q8"', KVDtypes("q8", "q8")), ('{ k = "bf16", v = "fp8" }', KVDtypes("bf16", "fp8"))],
)
def test_kv_cache_dtype_is_one_value_or_a_k_v_table(tmp_path, value, expected):
    path = write_profile(tmp_path, kv_cache_dtype=None)
    path.write_text(path.read_text() + f"kv_cache_dtype = {value}\n")
    assert read_profile(path).kv_cache_dtype == expected


@pytest.mark.parametrize(
    "table, why",
    [
        ('{ k = "q8" }', "exactly the keys k and v"),
        ('{ k = "q8", v = "int4" }', "kv_cache_dtype.v"),
    ],
)
def test_bad_kv_cache_dtype_table_is_one_line(tmp_path, table, why):
    path = write_profile(tmp_path, kv_cache_dtype=None)
    path.write_text(path.read_text() + f"kv_cache_dtype = {table}\n")
    with pytest.raises(GptossError, match=why):
        read_profile(path)


def test_nan_and_inf_are_refused(tmp_path):
    path = tmp_path / "odd.toml"
    text = write_profile(tmp_path).read_text().replace("memory_gib = 24", "memory_gib = inf")
    path.write_text(text)
    with pytest.raises(GptossError, match="memory_gib must be a number"):
        read_profile(path)


def test_bad_toml_and_missing_file(tmp_path):
    broken = tmp_path / "broken.toml"
    broken.write_text("device = \n")
    with pytest.raises(GptossError, match=r"profile .*broken\.toml: cannot read it"):
        load_profile(str(broken))
    with pytest.raises(GptossError, match=r"profile file .*nothere\.toml not found"):
        load_profile(str(tmp_path / "nothere.toml"))


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(GptossError) as err:
        load_profile("rtx9090")
    message = str(err.value)
    assert message.startswith("unknown profile 'rtx9090'; known: a100-40gb, cpu, h100-80gb")
    assert "rtx4090" in message and "auto" in message and "\n" not in message


# ------------------------------------------------------------------ --profile auto


def test_auto_without_cuda_is_cpu_with_host_ram(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    p = load_profile("auto")
    cpu = load_profile("cpu")
    ram = profiles.host_memory_bytes()
    assert p.name == "cpu" and p.device == "cpu" and p.memory_bytes == ram
    assert p.budget_bytes == ram - (cpu.memory_bytes - cpu.budget_bytes)


def test_cpu_profile_refuses_a_host_too_small():
    with pytest.raises(GptossError, match="GiB of RAM"):
        profiles.cpu_profile(4 * GIB)


def test_host_room_is_what_the_cpu_profile_leaves_tensors():
    # cpu.toml keeps 32 - 28 = 4 GiB for the system and reserves 1.5 GiB for the runtime.
    assert profiles.host_room(64 * GIB) == 64 * GIB - 11 * GIB // 2
    sized = profiles.cpu_profile(64 * GIB)
    assert profiles.host_room(64 * GIB) == sized.budget_bytes - sized.reserve_bytes
    assert profiles.host_room(5 * GIB) == 0  # less than the system and the runtime keep


@pytest.mark.parametrize(
    ("name", "total_gib", "expected"),
    [
        ("NVIDIA GeForce RTX 4090", 23.6, "rtx4090"),
        ("NVIDIA GeForce RTX 3090 Ti", 23.7, "rtx3090"),
        ("NVIDIA GeForce RTX 4080 SUPER", 15.6, "rtx4080-16gb"),
        ("NVIDIA GeForce RTX 4060 Ti", 15.6, "rtx4060ti-16gb"),
        ("NVIDIA GeForce RTX 4060 Ti", 7.6, None),  # the 8 GB card
        ("NVIDIA GeForce RTX 3060", 11.8, "rtx3060-12gb"),
        ("NVIDIA GeForce RTX 3060 Ti", 7.8, None),
        ("NVIDIA A100-SXM4-40GB", 39.4, "a100-40gb"),
        ("NVIDIA A100-SXM4-80GB", 79.2, None),
        ("NVIDIA H100 80GB HBM3", 79.2, "h100-80gb"),
        ("NVIDIA H200", 139.8, "h200"),
        ("NVIDIA L40S", 44.4, None),
    ],
)
def test_match_gpu(name, total_gib, expected):
    builtin = [load_profile(n) for n in profiles.builtin_profiles()]
    found = match_gpu(name, int(total_gib * GIB), builtin)
    assert (found.name if found else None) == expected


def _fake_cuda(monkeypatch, name: str, free: int, total: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    props = type("Props", (), {"name": name})
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (free, total))


def test_auto_picks_the_matching_card(monkeypatch):
    _fake_cuda(monkeypatch, "NVIDIA GeForce RTX 4090", free=int(23 * GIB), total=int(23.6 * GIB))
    assert load_profile("auto") == load_profile("rtx4090")


def test_auto_keeps_within_free_memory(monkeypatch):
    _fake_cuda(monkeypatch, "NVIDIA GeForce RTX 4090", free=12 * GIB, total=int(23.6 * GIB))
    assert load_profile("auto") == replace(load_profile("rtx4090"), budget_bytes=12 * GIB)
    _fake_cuda(monkeypatch, "NVIDIA GeForce RTX 4090", free=GIB // 2, total=int(23.6 * GIB))
    with pytest.raises(GptossError, match=r"only 0\.50 GiB free"):
        load_profile("auto")


def test_auto_on_an_unknown_card_uses_all_of_it(monkeypatch):
    _fake_cuda(monkeypatch, "NVIDIA L40S", free=44 * GIB, total=45 * GIB)
    p = load_profile("auto")
    assert p.name == "auto-nvidia-l40s" and p.device == "cuda"
    assert p.memory_bytes == 45 * GIB and p.budget_bytes == 44 * GIB


# ------------------------------------------------------------------ packaging


@pytest.mark.slow
def test_wheel_carries_the_profiles(tmp_path):
    """A non-editable build copies profiles/*.toml into gptoss_lite/_profiles."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in"):
        shutil.copy2(REPO / name, src / name)
    for folder in ("gptoss_lite", "quantize", "profiles"):
        shutil.copytree(REPO / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (src / "README.md").write_text("test build\n")  # the metadata needs one, its text does not
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        str(src),
        "--no-deps",
        "--no-build-isolation",
        "-w",
        str(tmp_path / "dist"),
        "-q",
    ]
    subprocess.run(cmd, check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in (REPO / "profiles").glob("*.toml"):
        assert f"gptoss_lite/_profiles/{path.name}" in names


def test_named_cpu_profile_is_sized_to_this_host():
    from gptoss_lite.memory.profiles import host_memory_bytes, load_profile

    profile = load_profile("cpu")
    assert profile.memory_bytes == host_memory_bytes()
    assert profile.budget_bytes < profile.memory_bytes
