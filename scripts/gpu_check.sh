#!/usr/bin/env bash
# GPU readiness, part B (issue 14), in one call on a lent GPU: each step runs under its own time
# limit and appends one JSON line to $OUT/steps.jsonl before the next starts, so whatever the
# call reaches comes back. Steps (all by default, or those named: `gpu_check.sh 1 2`):
#   1  the GPU tests, compiled: every test marked `gpu` (kernels at the 20b shapes, the model on
#      the kernels against the CPU float32 path)
#   2  `profile` of the 20b geometry on the rtx4090 profile, allocator capped at its 24 GB:
#      2k prompt, 16 generated tokens; report files into $OUT
#   3  `bench`: a 20b-geometry checkpoint written here first (no copy travels), then decode at a
#      short context and at 32k, prefill of a 2k prompt, GB/s, peak memory; `--compare
#      transformers` in its own process; the 12 GB card (host-RAM experts) last
#   4  step 3's gptoss-lite runs again with the decode step captured in a CUDA graph
# Nothing is installed: the device's python3 already holds torch (CUDA) and triton, and the
# project runs from this checkout. The variables below shrink the run to a tiny geometry on CPU,
# which is how tests/test_gpu_check.py runs this script without a GPU.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-$PWD/gpu-check-out}
PYTHON=${GPU_CHECK_PYTHON:-python3}
GEOMETRY=${GPU_CHECK_GEOMETRY:-gpt-oss-20b}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
PROFILE_CARD=${GPU_CHECK_PROFILE:-rtx4090}  # step 2's card
BENCH_PROFILE=${GPU_CHECK_BENCH_PROFILE:-auto}  # step 3's: this machine's
SMALL_CARD=${GPU_CHECK_SMALL_PROFILE:-rtx3060-12gb}
PROMPT=${GPU_CHECK_PROMPT:-2048}
GEN=${GPU_CHECK_GEN:-64}
LONG=${GPU_CHECK_LONG:-32768}  # the long-context decode
SYNTH=${GPU_CHECK_SYNTH:-/tmp/gpu-check-synth}
TESTS=${GPU_CHECK_TESTS:-tests}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$OUT"
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(1 2 3 4)

CLI=("$PYTHON" -c 'from gptoss_lite.cli import main; main()')

# run NAME LIMIT_S COMMAND...: the command's output goes to $OUT/log.txt; a JSON line with its
# exit status, seconds, whether the limit stopped it and the JSON it printed (its last line
# that parses) goes to $OUT/steps.jsonl.
run() {
    local name=$1 limit=$2 start rc out
    shift 2
    out=$(mktemp)
    echo "=== $name: $*" >>"$OUT/log.txt"
    start=$(date +%s.%N)
    timeout --kill-after=10 "$limit" "$@" >"$out" 2>>"$OUT/log.txt"
    rc=$?
    cat "$out" >>"$OUT/log.txt"
    "$PYTHON" - "$name" "$rc" "$start" "$(date +%s.%N)" "$limit" "$out" >>"$OUT/steps.jsonl" <<'EOF'
import json, sys
name, rc, start, end, limit, path = sys.argv[1:]
text = open(path).read()
result = None
try:  # a whole-output JSON document (bench --json), else the last line that parses
    result = json.loads(text)
except ValueError:
    for line in reversed(text.splitlines()):
        try:
            result = json.loads(line)
            break
        except ValueError:
            continue
print(json.dumps({"step": name, "rc": int(rc), "seconds": round(float(end) - float(start), 1),
                  "timed_out": int(rc) in (124, 137), "limit_s": int(limit), "result": result}))
EOF
    rm -f "$out"
    return "$rc"
}

ENVIRONMENT=$(
    cat <<'EOF'
import json, torch
info = {"torch": torch.__version__, "cuda": torch.version.cuda}
try:
    import triton
    info["triton"] = triton.__version__
except ImportError:
    info["triton"] = None
if torch.cuda.is_available():
    props = torch.cuda.get_device_properties(0)
    info.update(gpu=props.name, capability=f"{props.major}.{props.minor}",
                memory_bytes=props.total_memory, sms=props.multi_processor_count)
print(json.dumps(info))
EOF
)

step1() {
    local files
    files=$(grep -l "pytest.mark.gpu" "$TESTS"/test_*.py)
    # shellcheck disable=SC2086  # one word a file
    run pytest-gpu 300 "$PYTHON" -m pytest -q -m gpu -rs -p no:cacheprovider \
        --junitxml="$OUT/pytest-gpu.xml" $files
}

step2() {
    local folder
    folder=$(mktemp -d)
    run profile 240 "${CLI[@]}" profile --geometry "$GEOMETRY" --profile "$PROFILE_CARD" \
        --device "$DEVICE" --prompt-tokens "$PROMPT" --gen-tokens 16 --out "$folder" --overwrite
    for f in report.json report.md report.png; do
        [ -f "$folder/$f" ] && cp "$folder/$f" "$OUT/profile-$f"
    done
    rm -rf "$folder"
}

# bench_runs TAG [EXTRA OPTIONS]: the short-context, long-context and small-card benches
bench_runs() {
    local tag=$1
    shift
    run "bench-$tag-short" 150 "${CLI[@]}" bench --model "$SYNTH" --profile "$BENCH_PROFILE" \
        --device "$DEVICE" --context $((PROMPT + GEN)) --prompt-tokens "$PROMPT" \
        --gen-tokens "$GEN" --json "$@"
    run "bench-$tag-long" 180 "${CLI[@]}" bench --model "$SYNTH" --profile "$BENCH_PROFILE" \
        --device "$DEVICE" --context $((LONG + GEN)) --prompt-tokens "$LONG" \
        --gen-tokens "$GEN" --json "$@"
    run "bench-$tag-small-card" 150 "${CLI[@]}" bench --model "$SYNTH" --profile "$SMALL_CARD" \
        --device "$DEVICE" --prompt-tokens "$PROMPT" --gen-tokens "$GEN" --json "$@"
}

step3() {
    [ -f "$SYNTH/config.json" ] ||
        run synth 180 "${CLI[@]}" synth "$SYNTH" --geometry "$GEOMETRY" --overwrite || return
    bench_runs eager
    run bench-transformers 240 "${CLI[@]}" bench --model "$SYNTH" --profile "$BENCH_PROFILE" \
        --device "$DEVICE" --context $((PROMPT + GEN)) --prompt-tokens "$PROMPT" \
        --gen-tokens "$GEN" --compare transformers --json
}

step4() {
    [ -f "$SYNTH/config.json" ] ||
        run synth 180 "${CLI[@]}" synth "$SYNTH" --geometry "$GEOMETRY" --overwrite || return
    bench_runs graph --cuda-graph
}

run environment 60 "$PYTHON" -c "$ENVIRONMENT"
for s in "${steps[@]}"; do
    case $s in
    1 | 2 | 3 | 4) "step$s" ;;
    *) echo "unknown step $s (1, 2, 3 or 4)" >&2 ;;
    esac
done
cat "$OUT/steps.jsonl"
