"""CPU decode side by side with llama.cpp, both engines kept loaded and run in turn.

`gptoss-lite bench` and `llama-bench` alternated a minute apart compare two moments of a
shared machine whose memory can read 35 GB/s in one minute and 65 in the next. Here each
engine stays loaded in a process of its own, and a round runs each once, one after the other
(the order reversed every other round): a 128-token random prompt, then 32 greedy decode steps,
timed, as `bench` does. The figure is each round's ratio to llama.cpp, and their median.

    python scripts/decode_vs_llama_cpp.py CKPT MODEL.gguf --llama-decode ./llama_decode \\
        --rounds 30 --engine main=/path/to/tree --engine q8=/path/to/tree:cpu-q8

`--llama-decode` is scripts/llama_decode.c built against llama.cpp (its header says how; run it
with llama.cpp's libraries on LD_LIBRARY_PATH). An `--engine NAME=TREE[:KERNELS]` runs
gptoss-lite from the source tree TREE (default: the installed one) with those kernels (default:
auto). Both must fit in RAM together with the page cache llama.cpp maps its GGUF into.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

PROMPT, STEPS, THREADS = 128, 32, 2
WARM_UP = 2  # untimed rounds per engine before the first timed one
# Seconds between one engine's run and the next: an engine's threads poll for work a while after
# it (llama.cpp's by default), and would share the cores with the next one's first steps.
GAP = 1.0


def serve_rounds(checkpoint: str, kernels: str) -> None:
    """The gptoss-lite side: load once, then one timed round per line read from stdin."""
    import torch

    import gptoss_lite
    from gptoss_lite.engine.generate import prefill

    torch.set_num_threads(THREADS)
    try:
        runner = gptoss_lite.load(checkpoint, device="cpu", kernels=kernels)
    except gptoss_lite.GptossError as exc:  # one line, and the rounds say an engine stopped
        raise SystemExit(f"gptoss-lite: {exc}") from None
    model, cache = runner.model, runner.cache
    generator = torch.Generator().manual_seed(1)
    for _ in sys.stdin:
        prompt = torch.randint(0, runner.config.vocab_size, (PROMPT,), generator=generator)
        with torch.inference_mode():
            cache.rewind(0)
            token = prefill(model, cache, prompt, runner.prefill_chunk)[-1].argmax().view(1)
            start = time.perf_counter()
            for _ in range(STEPS):
                token = model(token, cache, last_only=True)[-1].argmax().view(1)
            print(f"{STEPS / (time.perf_counter() - start):.3f}", flush=True)


def start(command: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )


def run_round(engine: subprocess.Popen) -> float:
    """Ask one engine for a round, once the last one's threads are idle; its decode tok/s."""
    time.sleep(GAP)
    try:
        engine.stdin.write("go\n")
        engine.stdin.flush()
        line = engine.stdout.readline()
    except BrokenPipeError:  # it had stopped already
        line = ""
    if not line:
        raise SystemExit(f"an engine stopped (exit status {engine.wait()})")
    return float(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("gguf", nargs="?")
    parser.add_argument("--llama-decode", help="scripts/llama_decode.c, built")
    parser.add_argument("--engine", action="append", default=[], help="NAME=TREE[:KERNELS]")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--serve-rounds", metavar="KERNELS", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_rounds:  # an engine started by the rounds below
        serve_rounds(args.checkpoint, args.serve_rounds)
        return
    if not (args.gguf and args.llama_decode):
        parser.error("the GGUF and --llama-decode are needed")
    if not os.access(args.llama_decode, os.X_OK):
        parser.error(f"--llama-decode {args.llama_decode} is not a program to run")
    engines = {"llama.cpp": start([args.llama_decode, args.gguf, str(THREADS)], dict(os.environ))}
    for spec in args.engine or ["gptoss-lite="]:
        name, _, where = spec.partition("=")
        tree, _, kernels = where.partition(":")
        env = dict(os.environ, OMP_NUM_THREADS=str(THREADS))
        if tree:
            env["PYTHONPATH"] = tree
        serve = [args.checkpoint, "--serve-rounds", kernels or "auto"]
        engines[name] = start([sys.executable, os.path.abspath(__file__), *serve], env)
    for engine in engines.values():
        for _ in range(WARM_UP):
            run_round(engine)
    names = list(engines)
    tok_s: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            tok_s[name].append(run_round(engines[name]))
        print(f"round {r + 1}: " + ", ".join(f"{n} {tok_s[n][-1]:.2f}" for n in names), flush=True)
    for name in names:
        print(f"{name}: median {statistics.median(tok_s[name]):.2f} tok/s")
    for name in names[1:]:
        ratios = [a / b for a, b in zip(tok_s[name], tok_s["llama.cpp"], strict=True)]
        print(
            f"{name} / llama.cpp, per round: median {statistics.median(ratios):.3f}x, "
            f"geometric mean {statistics.geometric_mean(ratios):.3f}x, "
            f"{min(ratios):.2f}-{max(ratios):.2f}x, at least 1.0x in {sum(x >= 1 for x in ratios)} "
            f"of {len(ratios)}"
        )
    for engine in engines.values():
        engine.stdin.close()
        engine.wait()


if __name__ == "__main__":
    main()
