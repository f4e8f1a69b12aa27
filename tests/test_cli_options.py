"""The flags of every command: shared ones spelled alike, each option read from its variable."""

from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner

from gptoss_lite.cli import COMMANDS, load_command, main

SHARED = {  # long name -> every spelling it has wherever a command takes it
    "--model": {"--model", "-m"},
    "--profile": {"--profile", "-p"},
    "--context": {"--context", "-c"},
    "--device": {"--device"},
    "--cpu-experts": {"--cpu-experts"},
    "--geometry": {"--geometry", "-g"},
    "--overwrite": {"--overwrite"},
}


def options(command: click.Command) -> list[click.Option]:
    return [p for p in command.params if isinstance(p, click.Option)]


def flags(command: click.Command) -> set[str]:
    return {name for option in options(command) for name in option.opts}


def test_every_command_is_registered_from_the_one_list():
    ctx = click.Context(main)
    assert main.list_commands(ctx) == sorted(COMMANDS)
    assert all(main.get_command(ctx, name).name == name for name in COMMANDS)
    assert main.get_command(ctx, "nope") is None


@pytest.mark.parametrize("name", COMMANDS)
def test_shared_flags_are_spelled_alike(name):
    command = load_command(name)
    for option in options(command):
        long = next(name for name in option.opts if name.startswith("--"))
        if long in SHARED:
            assert set(option.opts) == SHARED[long], (command.name, option.opts)
    assert "--synthetic" not in flags(command)  # the synthetic geometry has one name: --geometry


@pytest.mark.parametrize("name", ["run", "chat", "serve", "plan", "profile", "bench"])
def test_every_command_that_loads_or_plans_a_model_takes_cpu_experts(name):
    assert "--cpu-experts" in flags(load_command(name))


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_has_its_variable_shown_in_help(name):
    command = load_command(name)
    help_text = CliRunner().invoke(main, [name, "--help"]).output
    for option in options(command):
        long = next(name for name in option.opts if name.startswith("--"))
        variable = "GPTOSS_LITE_" + long[2:].replace("-", "_").upper()
        assert option.envvar == variable
        assert variable in help_text.replace("\n", " ").replace(" ", "")  # help wraps lines


TPU = ({"GPTOSS_LITE_DEVICE": "tpu"}, "error: --device tpu: not a device")
NOPE = ({"GPTOSS_LITE_GEOMETRY": "tiny", "GPTOSS_LITE_PROFILE": "nope"}, "unknown profile 'nope'")
SEVEN_B = ({"GPTOSS_LITE_GEOMETRY": "gpt-oss-7b"}, "error: unknown model preset 'gpt-oss-7b'")
HALF = ({"GPTOSS_LITE_CPU_EXPERTS": "half"}, "'half' is not a number of layers or 'all'")


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["run", "Hi"], *TPU),
        (["chat"], *TPU),
        (["serve"], *TPU),
        (["serve"], *HALF),
        (["plan"], *NOPE),
        (["profile"], *NOPE),
        (["profile"], *HALF),
        (["bench"], *NOPE),
        (["synth", "out"], *SEVEN_B),
        (["quantize", "src", "dst"], {"GPTOSS_LITE_SHARD_SIZE": "-1"}, "'--shard-size'"),
        (["quant-error", "--tensors"], *SEVEN_B),
    ],
)
def test_each_command_reads_its_variables(args, env, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing is written, but if it were, not here
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code != 0 and message in result.output, result.output


def test_plan_options_from_the_environment():
    env = {"GPTOSS_LITE_MODEL": "gpt-oss-120b", "GPTOSS_LITE_PROFILE": "h100-80gb"}
    env |= {"GPTOSS_LITE_CONTEXT": "8192", "GPTOSS_LITE_JSON": "1"}
    result = CliRunner().invoke(main, ["plan"], env=env)
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert (plan["model"], plan["profile"], plan["context"]) == ("gpt-oss-120b", "h100-80gb", 8192)


def test_synth_options_from_the_environment(tmp_path):
    env = {"GPTOSS_LITE_GEOMETRY": "tiny", "GPTOSS_LITE_LAYERS": "1", "GPTOSS_LITE_SEED": "4"}
    result = CliRunner().invoke(main, ["synth", str(tmp_path / "ckpt")], env=env)
    assert result.exit_code == 0, result.output
    assert "(tiny, 1 layers, hf layout, seed 4)" in result.output
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["num_hidden_layers"] == 1
