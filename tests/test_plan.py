"""The memory planner and `gptoss-lite plan`, checked against hand-computed bytes."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest
from click.testing import CliRunner

import gptoss_lite.memory.plan as planner
from gptoss_lite import GptossError
from gptoss_lite.cli import main
from gptoss_lite.config import preset
from gptoss_lite.memory.plan import (
    CONTEXT_GRANULE,
    activation_phases,
    decode_bytes_per_token,
    device_weights,
    kv_bytes_per_token,
    kv_ring_bytes,
    plan,
    weight_bytes,
)
from gptoss_lite.memory.profiles import GIB, cpu_profile, load_profile, with_budget
from gptoss_lite.model.kv_quant import KVDtypes

GPT20, GPT120 = preset("gpt-oss-20b"), preset("gpt-oss-120b")
RTX4090 = load_profile("rtx4090")
MACHINE_RAM = 256 * GIB
HOST_KEEPS = 11 * GIB // 2  # cpu.toml: 4 GiB for the system, a 1.5 GiB reserve for the runtime


@pytest.fixture(autouse=True)
def machine_ram(monkeypatch):
    """Plans here are made for a host of MACHINE_RAM, whatever the machine running them has."""
    monkeypatch.setattr(planner, "host_memory_bytes", lambda: MACHINE_RAM)


# ------------------------------------------------------------------ weights


def test_20b_categories_sum_to_the_checkpoint():
    w = weight_bytes(GPT20)
    assert sum(w.values()) == 13_761_264_768  # model.safetensors.index.json total_size
    # Per layer: gate_up blocks + scales, down blocks + scales (the published shapes), biases.
    per_layer = 265_420_800 + 16_588_800 + 132_710_400 + 8_294_400 + 32 * (5760 + 2880) * 2
    assert w["experts"] == 24 * per_layer == 10_165_616_640  # 10.15 GB packed + 13.3 MB biases
    # q, k, v, o weights + their biases + sinks, bf16.
    attention = (2880 * (4096 + 512 + 512) + 4096 * 2880 + 4096 + 512 + 512 + 2880 + 64) * 2
    assert w["attention"] == 24 * attention == 1_274_406_912
    assert w["router"] == 24 * (32 * 2880 + 32) * 2
    assert w["norms"] == (24 * 2 + 1) * 2880 * 2
    assert w["embedding"] == w["lm_head"] == 201_088 * 2880 * 2 == 1_158_266_880


def test_120b_categories_sum_to_the_predicted_checkpoint():
    assert sum(weight_bytes(GPT120).values()) == 65_248_815_744


def test_device_weights_keep_norms_and_sinks_fp32_and_embedding_on_host():
    device, host = device_weights(GPT20, RTX4090)
    assert device["norms"] == 49 * 2880 * 4
    assert device["attention"] == 1_274_406_912 + 24 * 64 * 2  # sinks: bf16 on disk, fp32 held
    assert "embedding" not in device and host == {"embedding": 1_158_266_880}
    assert sum(device.values()) == 13_761_264_768 - 1_158_266_880 + 49 * 2880 * 2 + 24 * 64 * 2
    device, host = device_weights(GPT20, replace(RTX4090, embedding="device"))
    assert device["embedding"] == 1_158_266_880 and host == {}
    _, host = device_weights(GPT20, load_profile("cpu"))
    assert host == {}  # on the cpu device the host is the device


# ------------------------------------------------------------------ KV cache and activations


BF16 = KVDtypes()


def test_kv_bytes():
    assert kv_bytes_per_token(GPT20.with_(num_layers=2), BF16) == 2048  # one full layer, bf16
    assert kv_bytes_per_token(GPT20, BF16) == 12 * 2048 == 24_576
    assert kv_bytes_per_token(GPT120, BF16) == 18 * 2048 == 36_864
    assert kv_ring_bytes(GPT20, BF16) == 12 * 128 * 2048


def test_quantized_kv_bytes_count_codes_and_scales():
    # 8 kv heads of 64 values: q8 is 64 int8 codes + 2 fp16 scales (blocks of 32) = 68 B a row,
    # fp8 64 codes + 1 fp16 scale = 66 B, bf16 128 B; K and V rows for each of 12 full layers.
    assert kv_bytes_per_token(GPT20, KVDtypes("q8", "q8")) == 12 * 8 * (68 + 68) == 13_056
    assert kv_bytes_per_token(GPT20, KVDtypes("fp8", "fp8")) == 12 * 8 * (66 + 66)
    assert kv_bytes_per_token(GPT20, KVDtypes("bf16", "q8")) == 12 * 8 * (128 + 68)
    assert kv_ring_bytes(GPT20, KVDtypes("q8", "fp8")) == 12 * 128 * 8 * (68 + 66)


def test_activation_phases_20b_chunk_512():
    a = activation_phases(GPT20, 512)
    assert a["resident"] == 2 * 512 * 2880 * 2 + 512 * 8
    attention = (
        512 * 2880 * 2  # normed input
        + 512 * 5120 * 2  # qkv
        + 3 * 512 * 32 * 4  # RoPE angles, cos, sin
        + 512 * (4096 + 512) * 2  # q, k rotated
        + (128 + 512) * 2 * 512 * 2  # sliding layer: ring + chunk keys and values
        + 2 * 512 * 4096 * 4  # q in fp32, then scaled
        + 2 * 1024 * 512 * 4  # K and V block fp32
        + 64 * 512 * 1024 * 4  # one block's scores, made probabilities in place
        + 3 * 512 * 1024  # masks
        + 64 * 512 * 64 * 4  # accumulator
        + 2 * 64 * 512 * 4  # max, denominator
    )
    assert a["attention"] == attention == 179_830_784
    moe = (
        512 * 2880 * 2  # normed input
        + 512 * 32 * 4  # router logits
        + 512 * 4 * (8 + 4)  # top-4 ids and weights
        + 512 * 2880 * 4  # fp32 sum
        + (5760 * 2880 + 2880 * 2880) * 2  # one expert in bf16
        + 5760 * 2880 * 4  # decode staging of gate_up: int32 index + bf16 values
        + 512 * (2880 + 5760 + 5760 + 2880) * 2  # routed tokens through that expert
        + 2 * 512 * 2880 * 4  # its output in fp32, weighted
    )
    assert a["moe"] == moe == 154_550_272
    assert a["logits"] == 2880 * 2 + 201_088 * (2 + 4)


# ------------------------------------------------------------------ plan


def test_rtx4090_default_plan_is_near_14_gib():
    p = plan(GPT20, RTX4090)
    assert p.bound == "budget" and p.context % CONTEXT_GRANULE == 0
    assert p.context == 47_360
    assert 13.9 * GIB < p.total_bytes <= p.budget_bytes == 14 * GIB
    assert p.total_bytes == p.weights_bytes + p.kv_bytes + p.activation_bytes + p.reserve_bytes
    assert p.kv_bytes == 12 * 128 * 2048 + 47_360 * 24_576
    assert p.activation_bytes == 5_902_336 + 179_830_784
    with pytest.raises(GptossError):
        plan(GPT20, RTX4090, p.context + CONTEXT_GRANULE)


def test_refusal_names_the_numbers_and_its_suggestion_fits():
    with pytest.raises(GptossError) as err:
        plan(GPT20, RTX4090, 131_072)
    message = str(err.value)
    assert message.startswith("context 131072 needs 3.00 GiB of KV cache, 1.09 GiB are free")
    assert "in profile rtx4090; the most that fits is 47360: use --context 47360" in message
    assert "\n" not in message
    suggested = int(re.search(r"--context (\d+)", message).group(1))
    assert plan(GPT20, RTX4090, suggested).context == suggested


def test_requested_context_is_kept_exactly():
    p = plan(GPT20, RTX4090, 1000)
    assert (p.context, p.bound) == (1000, "requested")
    with pytest.raises(GptossError, match=r"outside 1\.\.131072"):
        plan(GPT20, RTX4090, 0)
    with pytest.raises(GptossError, match=r"outside 1\.\.131072"):
        plan(GPT20, load_profile("h200"), 131_073)


def test_120b_on_h100_is_cap_bound():
    p = plan(GPT120, load_profile("h100-80gb"))
    assert (p.context, p.bound) == (131_072, "cap")
    assert p.kv_bytes == 18 * 128 * 2048 + 131_072 * 36_864
    assert p.total_bytes < p.budget_bytes


def test_profile_cap_bounds_the_choice():
    p = plan(GPT20, load_profile("cpu"))
    assert (p.context, p.bound) == (32_768, "cap")


def test_model_that_does_not_fit_says_so():
    with pytest.raises(GptossError) as err:
        plan(GPT20, load_profile("rtx3060-12gb"), cpu_experts=0)
    assert str(err.value).startswith("gpt-oss-20b does not fit profile rtx3060-12gb: weights 11.74")
    with pytest.raises(GptossError, match="does not fit profile rtx4090"):
        plan(GPT120, RTX4090, cpu_experts=0)


EXPERTS_PER_LAYER_20B = 10_165_616_640 // 24


def test_small_card_gets_the_fewest_expert_layers_on_the_host():
    rtx3060 = load_profile("rtx3060-12gb")
    p = plan(GPT20, rtx3060)
    assert p.cpu_experts == 5
    assert p.host_weights["experts"] == 5 * EXPERTS_PER_LAYER_20B
    assert p.weights["experts"] == 19 * EXPERTS_PER_LAYER_20B
    assert p.context >= CONTEXT_GRANULE and p.total_bytes <= p.budget_bytes
    # One host layer fewer leaves room for less than CONTEXT_GRANULE tokens of KV cache.
    fewer = plan(GPT20, rtx3060, cpu_experts=5)
    free = fewer.budget_bytes - fewer.total_bytes + fewer.kv_bytes - fewer.kv_ring_bytes
    assert free - EXPERTS_PER_LAYER_20B < CONTEXT_GRANULE * fewer.kv_bytes_per_token
    with pytest.raises(GptossError, match="does not fit profile rtx3060-12gb"):
        plan(GPT20, rtx3060, cpu_experts=4)
    assert plan(GPT20, RTX4090).cpu_experts == 0  # a card that holds every expert keeps them


def test_cpu_experts_requested_or_from_the_profile():
    every = plan(GPT20, RTX4090, cpu_experts="all")
    assert every.cpu_experts == 24 and every.weights["experts"] == 0
    assert every.host_weights["experts"] == 10_165_616_640
    assert every.context > plan(GPT20, RTX4090).context
    assert plan(GPT20, replace(RTX4090, cpu_experts=3)).cpu_experts == 3
    assert plan(GPT20, replace(RTX4090, cpu_experts=3), cpu_experts=1).cpu_experts == 1
    for bad in (25, -1, "half"):
        with pytest.raises(GptossError, match="cpu_experts"):
            plan(GPT20, RTX4090, cpu_experts=bad)
    # On a cpu device the host is the device: the split is made, the bytes stay counted there.
    on_cpu = plan(GPT20, load_profile("cpu"), cpu_experts=2)
    assert on_cpu.cpu_experts == 2 and "experts" not in on_cpu.host_weights
    assert on_cpu.weights == plan(GPT20, load_profile("cpu")).weights


def test_prefill_chunk_override():
    assert plan(GPT20, RTX4090, prefill_chunk=256).activations == activation_phases(GPT20, 256)
    with pytest.raises(GptossError, match="prefill chunk must be positive"):
        plan(GPT20, RTX4090, prefill_chunk=0)


def test_to_json_has_the_numbers():
    p = plan(GPT20, RTX4090)
    data = json.loads(p.to_json())
    assert data["weights_bytes"] == p.weights_bytes == 12_603_283_200
    assert data["weights"]["experts"] == 10_165_616_640
    assert data["kv_bytes_per_token"] == 24_576 and data["kv_bytes"] == p.kv_bytes
    assert data["activation_bytes"] == p.activation_bytes
    assert data["total_bytes"] == p.total_bytes and data["budget_bytes"] == 14 * GIB
    assert data["host_bytes"] == 1_158_266_880  # the embedding
    assert data["host_room_bytes"] == MACHINE_RAM - HOST_KEEPS
    assert (data["model"], data["profile"], data["context"]) == ("gpt-oss-20b", "rtx4090", 47_360)


# ------------------------------------------------------------------ CLI


def run_cli(*args: str):
    return CliRunner().invoke(main, ["plan", *args])


def test_cli_human_output():
    result = run_cli("--model", "gpt-oss-20b", "--profile", "rtx4090")
    assert result.exit_code == 0, result.output
    for text in (
        "experts (MXFP4 + bias)",
        "9,694.7",
        "KV cache (47,360 tokens)",
        "embedding, on the host",
        "context: 47,360 tokens (the most that fits the budget",
        "24,576 B per token",
        "host RAM: 1.08 GiB used of 250.50 GiB available",
    ):
        assert text in result.output


def test_cli_shows_the_expert_split():
    result = run_cli("--model", "gpt-oss-20b", "--profile", "rtx3060-12gb")
    assert result.exit_code == 0, result.output
    host_mib = f"{5 * EXPERTS_PER_LAYER_20B / (1 << 20):,.1f}"
    assert re.search(
        rf"experts \(MXFP4 \+ bias\), on the host +{re.escape(host_mib)} ", result.output
    )
    assert "experts: 5 layers' in host RAM (run by the CPU kernel)" in result.output
    result = run_cli("--model", "gpt-oss-20b", "--profile", "rtx4090", "--cpu-experts", "all")
    assert result.exit_code == 0 and "experts: 24 layers' in host RAM" in result.output
    result = run_cli("--model", "gpt-oss-20b", "--profile", "rtx4090", "--cpu-experts", "x")
    assert result.exit_code == 2 and "not a number of layers or 'all'" in result.output


def test_cli_json_with_a_hub_id():
    result = run_cli("--model", "openai/gpt-oss-120b", "--profile", "h100-80gb", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (data["model"], data["context"], data["bound"]) == ("gpt-oss-120b", 131_072, "cap")


def test_cli_reads_a_local_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(GPT20.to_hf()))
    for model in (str(tmp_path), str(tmp_path / "config.json")):
        result = run_cli("--model", model, "--profile", "rtx4090", "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["context"] == 47_360


def test_cli_errors_are_one_line():
    for args, start in [
        (("--profile", "rtx4090", "--context", "131072"), "error: context 131072 needs"),
        (("--profile", "nope"), "error: unknown profile 'nope'"),
        (("--model", "llama-7b", "--profile", "rtx4090"), "error: --model llama-7b: not a folder"),
    ]:
        result = run_cli(*args)
        assert result.exit_code == 1 and result.output.startswith(start)
        assert result.output.count("\n") == 1


def test_cli_auto_profile_without_a_gpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = run_cli("--model", "tiny", "--profile", "auto", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["profile"] == "cpu"


# ------------------------------------------------------------------ one category table


@pytest.mark.parametrize("config", [GPT20, GPT120, preset("tiny")], ids=lambda c: c.name)
def test_planned_weights_equal_the_models_parameters_per_category(config):
    # The model's own parameter shapes (on the meta device: no memory), grouped by the category
    # table, must give the planner's arithmetic to the byte.
    import torch

    from gptoss_lite.memory.categories import CATEGORIES, category_of
    from gptoss_lite.model.transformer import Transformer

    counted = dict.fromkeys(CATEGORIES, 0)
    for name, param in Transformer(config, torch.bfloat16).named_parameters():
        counted[category_of(name)] += param.numel() * param.element_size()
    on_device, host = device_weights(config, load_profile("cpu"))
    assert host == {} and on_device == counted
    assert list(weight_bytes(config)) == list(CATEGORIES)


def test_dense_experts_are_bf16_matrices():
    # HF transformers dequantizes the 20b experts to bf16: 2.17 GB read per token on 4 layers.
    dense = weight_bytes(GPT20, dense_experts=True)["experts"]
    assert dense == 24 * 32 * ((5760 * 2880 + 2880 * 2880) * 2 + (5760 + 2880) * 2)
    four = GPT20.with_(num_layers=4)
    read = decode_bytes_per_token(four, 0, dense_experts=True)
    per_layer = 4 * dense // 24 // 32 + (5120 * 2880 + 5120 + 2880 * 4096 + 2880 + 64) * 2
    per_layer += (32 * 2880 + 32) * 2 + 2 * 2880 * 2  # router, norms (bf16 in transformers)
    assert read == 4 * per_layer + 201_088 * 2880 * 2 + 2880 * 2 + 2880 * 2
    assert round(read / 1e9, 2) == 2.17


# ------------------------------------------------------------------ host RAM

# One layer's experts of gpt-oss-120b: 128 x (gate_up blocks + scales, down blocks + scales,
# both biases); a scale per 32 values.
EXPERTS_PER_LAYER_120B = 128 * (
    5760 * 2880 // 2 + 5760 * 90 + 2880 * 2880 // 2 + 2880 * 90 + (5760 + 2880) * 2
)


def test_host_ram_must_hold_what_the_plan_keeps_there():
    p = plan(GPT120, RTX4090, host_memory=256 * GIB)
    host = 1_158_266_880 + 30 * EXPERTS_PER_LAYER_120B  # the embedding, 30 layers' experts
    assert p.host_weights == {"embedding": 1_158_266_880, "experts": 30 * EXPERTS_PER_LAYER_120B}
    assert p.cpu_experts == 30 and p.host_bytes == host
    assert p.host_room_bytes == 256 * GIB - HOST_KEEPS
    assert plan(GPT120, RTX4090, host_memory=host + HOST_KEEPS).host_bytes == host  # just fits
    with pytest.raises(GptossError, match="keeps 48.42 GiB in host RAM"):
        plan(GPT120, RTX4090, host_memory=host + HOST_KEEPS - 1)
    with pytest.raises(GptossError) as err:
        plan(GPT120, RTX4090, host_memory=8 * GIB)
    assert str(err.value) == (
        "gpt-oss-120b on rtx4090 keeps 48.42 GiB in host RAM (embedding 1.08 + experts of 30 "
        "layers 47.34), more than the 2.50 GiB the host leaves tensors (8.00 GiB of RAM less "
        "5.50 for the system and the runtime); use a host with more RAM, a larger card "
        "(profile) or a smaller model"
    )


def test_the_host_ram_is_this_machines_by_default(monkeypatch):
    monkeypatch.setattr(planner, "host_memory_bytes", lambda: 8 * GIB)
    with pytest.raises(GptossError, match=r"\(8\.00 GiB of RAM less 5\.50"):
        plan(GPT120, RTX4090)


def test_more_host_layers_than_the_ram_holds_are_told_how_many_do():
    rtx3060, ram = load_profile("rtx3060-12gb"), 12 * GIB
    # (12 - 5.5 GiB - the 1.08 GiB embedding) // 0.39 GiB a layer = 13 layers; the card needs 5.
    with pytest.raises(GptossError, match=r"; use --cpu-experts 13 \(the card needs at least 5\)$"):
        plan(GPT20, rtx3060, cpu_experts="all", host_memory=ram)
    assert plan(GPT20, rtx3060, cpu_experts=13, host_memory=ram).cpu_experts == 13
    with pytest.raises(GptossError, match="keeps 6.60 GiB in host RAM"):
        plan(GPT20, rtx3060, cpu_experts=14, host_memory=ram)
    # When the card needs more layers than the RAM holds, fewer is no way out.
    with pytest.raises(GptossError, match="experts of 5 layers 1.97.*a smaller model$"):
        plan(GPT20, rtx3060, host_memory=8 * GIB)


def test_a_cpu_plan_counts_the_host_once():
    p = plan(GPT20, cpu_profile(64 * GIB), cpu_experts="all", host_memory=8 * GIB)
    assert p.host_weights == {} and p.host_room_bytes is None
    assert p.weights == plan(GPT20, cpu_profile(64 * GIB)).weights  # the budget holds them all


def test_cli_shows_the_host_ram_used_and_available():
    result = run_cli("--model", "gpt-oss-120b", "--profile", "rtx4090", "--host-ram", "64")
    assert result.exit_code == 0, result.output
    assert "host RAM: 48.42 GiB used of 58.50 GiB available" in result.output
    refused = run_cli("--model", "gpt-oss-120b", "--profile", "rtx4090", "--host-ram", "16")
    assert refused.exit_code == 1 and refused.output.count("\n") == 1
    assert refused.output.startswith("error: gpt-oss-120b on rtx4090 keeps 48.42 GiB in host RAM")
    assert "10.50 GiB the host leaves tensors (16.00 GiB of RAM" in refused.output
    on_cpu = run_cli("--model", "tiny", "--profile", "cpu")
    assert on_cpu.exit_code == 0 and "host RAM:" not in on_cpu.output


@pytest.mark.parametrize("flag", ["--host-ram", "--budget"])
@pytest.mark.parametrize("value", ["nan", "inf", "1e400", "0", "-1", "lots"])
def test_memory_amounts_must_be_finite_and_positive(flag, value):
    result = run_cli("--model", "gpt-oss-20b", "--profile", "rtx4090", flag, value)
    assert result.exit_code == 2, result.output  # click's usage error: one line, no traceback
    assert f"Invalid value for '{flag}'" in result.output and "GiB" in result.output


# ------------------------------------------------------------------ edge geometries


def test_all_sliding_model_is_bounded_only_by_the_caps():
    one = GPT20.with_(num_layers=1)  # layer 0 is sliding: no full-attention layer at all
    assert one.num_full_layers == 0
    p = plan(one, replace(RTX4090, max_context=32_768))
    assert (p.kv_bytes_per_token, p.context, p.bound) == (0, 32_768, "cap")
    assert p.kv_bytes == 128 * 2048  # the one ring
    assert plan(one, replace(RTX4090, max_context=10**6)).context == one.max_context == 131_072
    assert plan(one, RTX4090, 100_000).context == 100_000
    with pytest.raises(GptossError, match="does not fit profile rtx3060-12gb"):
        plan(GPT20.with_(num_layers=24, layer_types=("sliding_attention",) * 24),
             load_profile("rtx3060-12gb"), cpu_experts=0)  # fmt: skip


def test_a_small_max_context_is_not_rounded_to_zero():
    small = preset("tiny").with_(max_context=100)
    assert plan(small, load_profile("cpu")).context == 100


# ------------------------------------------------------------------ --budget


def test_refusal_names_the_budget_that_would_hold_it():
    with pytest.raises(GptossError) as err:
        plan(GPT20, RTX4090, 131_072)
    budget = float(re.search(r"--budget (\d+\.\d\d) \(GiB; rtx4090 has 24\)", str(err.value))[1])
    # The budget named is the smallest (in 0.01 GiB) that holds the context.
    p = plan(GPT20, with_budget(RTX4090, budget), 131_072)
    assert p.total_bytes <= p.budget_bytes == round(budget * GIB)
    with pytest.raises(GptossError):
        plan(GPT20, with_budget(RTX4090, budget - 0.01), 131_072)
    # Where the card itself is too small (its experts kept on it), only a larger profile helps.
    with pytest.raises(GptossError) as err:
        plan(GPT120, RTX4090, cpu_experts=0)
    assert "--budget" not in str(err.value)


def test_budget_must_stay_within_the_card():
    assert with_budget(RTX4090, 24).budget_bytes == 24 * GIB
    for bad in (24.5, 1.0, 0.5, float("nan"), float("inf")):
        with pytest.raises(GptossError, match="profile rtx4090 has 24 GiB and reserves 1"):
            with_budget(RTX4090, bad)


def test_cli_budget_option_and_variable(monkeypatch):
    refused = run_cli("--profile", "rtx4090", "--context", "131072")
    budget = re.search(r"--budget (\S+)", refused.output)[1]
    for args, env in [(("--budget", budget), {}), ((), {"GPTOSS_LITE_BUDGET": budget})]:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        result = run_cli("--profile", "rtx4090", "--context", "131072", "--json", *args)
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["budget_bytes"] == round(float(budget) * GIB)
    result = run_cli("--profile", "rtx4090", "--budget", "30")
    assert result.exit_code == 1 and result.output.startswith("error: --budget 30: profile rtx4090")


# ------------------------------------------------------------------ quantized KV cache


def test_q8_cache_targets_on_16_and_24_gb_cards():
    rtx4060ti = load_profile("rtx4060ti-16gb")
    q8 = replace(rtx4060ti, kv_cache_dtype=KVDtypes("q8", "q8"))
    assert plan(GPT20, q8).context >= 1.8 * plan(GPT20, rtx4060ti).context
    assert plan(GPT20, replace(RTX4090, kv_cache_dtype=KVDtypes("q8", "q8"))).context >= 80_000


def test_cli_kv_cache_dtype_in_table_json_and_warning():
    result = run_cli("--profile", "rtx4090", "--kv-cache-dtype", "q8", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    expected = plan(GPT20, replace(RTX4090, kv_cache_dtype=KVDtypes("q8", "q8")))
    assert data["kv_cache_dtype"] == {"k": "q8", "v": "q8"} and data["kv_bytes_per_token"] == 13_056
    assert data["context"] == expected.context and data["kv_bytes"] == expected.kv_bytes
    (warning,) = result.stderr.splitlines()
    assert warning.startswith("warning: K cache in q8: gpt-oss is sensitive to quantized keys")
    assert "median KL 0.055 nats" in warning
    result = run_cli("--profile", "rtx4090", "--kv-cache-dtype", "bf16,fp8")
    assert result.exit_code == 0 and result.stderr == ""  # V only: no warning
    assert "K bf16, V fp8" in result.stdout and "KV cache bf16,fp8 (" in result.stdout


def test_cli_bad_kv_cache_dtype_is_one_line():
    result = run_cli("--profile", "rtx4090", "--kv-cache-dtype", "q4")
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert result.output.startswith("error: unknown KV-cache dtype 'q4' for K; use bf16, q8, fp8")


# ------------------------------------------------------------------ parallel sequences


def test_parallel_sequences_split_the_kv_budget():
    one, four = plan(GPT20, RTX4090), plan(GPT20, RTX4090, parallel=4)
    ring = 12 * 128 * 2048
    assert four.parallel == 4 and four.kv_ring_bytes == one.kv_ring_bytes == ring
    # What one sequence's growth could use, less the rings of the three more.
    growth = one.budget_bytes - (one.total_bytes - one.kv_bytes_per_token * one.context) - 3 * ring
    assert four.context == growth // (4 * 24_576) // CONTEXT_GRANULE * CONTEXT_GRANULE == 11_520
    assert four.kv_sequence_bytes == ring + 11_520 * 24_576
    assert four.kv_bytes == 4 * four.kv_sequence_bytes
    assert four.total_bytes <= four.budget_bytes
    with pytest.raises(GptossError, match="for each of 4 sequences.*fewer --parallel"):
        plan(GPT20, RTX4090, four.context + CONTEXT_GRANULE, parallel=4)
    assert plan(GPT20, RTX4090, four.context, parallel=4).kv_bytes == four.kv_bytes


def test_the_default_parallel_leaves_each_sequence_enough_context():
    # 14 GiB hold 2 sequences of 23,552 tokens; 3 would get fewer than MIN_SEQUENCE_CONTEXT.
    auto = plan(GPT20, RTX4090, parallel=None)
    assert (auto.parallel, auto.context) == (2, 23_552)
    assert planner.MIN_SEQUENCE_CONTEXT == 16_384
    assert plan(GPT20, cpu_profile(32 * GIB), parallel=None).parallel == 4  # the most by default
    # A requested context: the most sequences that each hold it.
    assert plan(GPT20, RTX4090, 10_000, parallel=None).parallel == 4
    assert plan(GPT20, RTX4090, 20_000, parallel=None).parallel == 2
    assert plan(GPT20, RTX4090, 40_000, parallel=None).parallel == 1
    with pytest.raises(GptossError, match="parallel must be"):
        plan(GPT20, RTX4090, parallel=0)


def test_cli_prints_each_sequences_context():
    result = run_cli("-p", "rtx4090", "--parallel", "4")
    assert result.exit_code == 0, result.output
    assert "KV cache (11,520 tokens x 4)" in result.output
    assert "context: 11,520 tokens for each of 4 sequences" in result.output
    assert f"each with a KV cache of {12 * 128 * 2048 + 11_520 * 24_576:,} B" in result.output
    data = json.loads(run_cli("-p", "rtx4090", "--parallel", "auto", "--json").output)
    assert (data["parallel"], data["context"]) == (2, 23_552)
    assert data["kv_bytes"] == 2 * data["kv_sequence_bytes"]
    bad = run_cli("--parallel", "0")
    assert bad.exit_code == 2 and "not a number of sequences" in bad.output
