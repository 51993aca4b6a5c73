#!/usr/bin/env bash
# One short GPU check (within GPU_CHECK_DEADLINE_S, default 540 s, of its start): equality of the GPU
# attribution (chunked, batched backward passes, forward mode; a model whose last layers run on another
# device) with the per-token definition on tiny models and the arithmetic each precision mode records
# (bench/gpu_check_steps.py, steps 1 and 1b), then bench/gpu_bench.py (LLaMA-7B shape: the per-token
# loop and float32 in reverse and forward mode, an attribution job's model load, one attention and one
# FFN layer job, then the other precision modes, and the projected paper workflow) with the time left
# as its --deadline-s (less GPU_CHECK_PROBE_S, 120), then, when a minute or more is left,
# bench/generation_probe.py (step 3: greedy steps
# per dtype with cuBLAS's reduced-precision reductions off and on, into generation_probe.json next to
# --output). Give --output a path under the device's $OUT: it is rewritten after every
# measurement, so a run cut off still returns what it measured; next to it go gpu_check_steps.json
# (steps 1/1b: every measured difference, its bound, pass or fail, the error text of a step that
# failed) and gpu_check.log (everything this script printed). A failed step is recorded and the
# benchmark still runs; the exit status is 1 when any step or the benchmark failed.
# Arguments go to gpu_bench.py (a --deadline-s among them replaces the computed one), e.g.
#   bash bench/gpu_check.sh --output gpu_bench.json
# Smoke test on a CPU (the same code paths, a tiny shape): GPU_CHECK_ALLOW_CPU=1 bash bench/gpu_check.sh --allow-cpu --small
# On the GPU machine it runs under that machine's python3 and packages: tests/test_bench.py runs the smoke test
# without the workflow's dependencies that image lacks (NOT_ON_THE_GPU_MACHINE there).
# PYTHON picks the interpreter (default python3, else python).
set -uo pipefail  # no -e: a failing step is recorded, and the next one still runs
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-$(command -v python3 || command -v python || echo python3)}
# Seconds for the whole check and for steps 1 and 1b (killed after them): sized for a GPU machine whose
# run is stopped at 600 s; a CPU smoke test (GPU_CHECK_ALLOW_CPU, maybe on a busy machine) gets more.
if [ -n "${GPU_CHECK_ALLOW_CPU:-}" ]; then cpu=1; else cpu=""; fi
deadline=${GPU_CHECK_DEADLINE_S:-${cpu:+1800}}
deadline=${deadline:-540}
step1_limit=${GPU_CHECK_STEP1_S:-${cpu:+900}}
step1b_limit=${GPU_CHECK_STEP1B_S:-${cpu:+600}}
probe_reserve=${GPU_CHECK_PROBE_S:-120}  # seconds kept from gpu_bench for step 3 (it gets more if gpu_bench ends early)

output=""  # gpu_bench.py's --output: its folder gets the steps' JSON and the log
previous=""
for argument in "$@"; do
    if [ "$previous" = "--output" ]; then output=$argument; fi
    case $argument in --output=*) output=${argument#--output=} ;; esac
    previous=$argument
done
if [ -n "$output" ]; then
    folder=$(dirname "$output")
else
    folder=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check-XXXXXX")
fi
mkdir -p "$folder"
steps="$folder/gpu_check_steps.json"
log="$folder/gpu_check.log"
rm -f "$steps"

run_step() {  # NAME SECONDS COMMAND...: the command, killed after SECONDS; its exit status recorded
    local name=$1 limit=$2 status
    shift 2
    echo "== step $name ($(date -u +%H:%M:%S), ${SECONDS} s in)"
    if command -v timeout >/dev/null; then
        timeout -k 10 "$limit" "$@"
    else
        "$@"
    fi
    status=$?
    "$PYTHON" bench/gpu_check_steps.py status --json "$steps" --step "$name" --exit-status "$status" ||
        echo "could not record step $name's exit status ($status) in $steps" >&2
    if [ "$status" != 0 ]; then echo "== step $name FAILED (exit status $status)"; fi
    return "$status"
}

main() {
    local failed=()
    "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
               torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')" || failed+=("torch")
    # 1. equality on tiny LLaMA/Mistral GQA models, every chunk size, on the GPU; the precision modes
    run_step "1 equality" "${step1_limit:-180}" "$PYTHON" bench/gpu_check_steps.py equality --json "$steps" ||
        failed+=("1 equality")
    # 1b. a model whose final norm and head run on the CPU through accelerate hooks, both autodiff modes
    run_step "1b split model" "${step1b_limit:-90}" "$PYTHON" bench/gpu_check_steps.py split --json "$steps" ||
        failed+=("1b split model")
    # 2. the LLaMA-7B-shaped benchmark (random weights built on the GPU), in the time the steps left
    local left=$((deadline - SECONDS - probe_reserve))
    if [ "$left" -lt 60 ]; then left=60; fi
    run_step "2 gpu_bench" "$((left + 30))" "$PYTHON" bench/gpu_bench.py --deadline-s "$left" "$@" ||
        failed+=("2 gpu_bench")
    # 3. why half-precision greedy steps ran slower than float32's (bench/generation_probe.py), in what is left
    left=$((deadline - SECONDS))
    if [ "$left" -ge 60 ]; then
        run_step "3 generation probe" "$left" "$PYTHON" bench/generation_probe.py --output "$folder/generation_probe.json" ||
            failed+=("3 generation probe")
    else
        echo "== step 3 generation probe: skipped (${left} s left of the deadline)"
    fi
    if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv; fi
    echo "== gpu_check: ${SECONDS} s; steps -> $steps; log -> $log${output:+; results -> $output}"
    if [ "${#failed[@]}" -gt 0 ]; then
        printf '== gpu_check FAILED: %s\n' "${failed[*]}"
        return 1
    fi
    echo "== gpu_check: every step passed"
}

main "$@" 2>&1 | tee "$log"
exit "${PIPESTATUS[0]}"
