#!/usr/bin/env bash
# One prepared run of the benchmarks on a lent GPU machine (one H200, 16 cores, no network, a copy of
# the repo): the paper's Table 2 (JFB vs Jacobian-based seconds per epoch on MNIST/SVHN/CIFAR-10-shaped
# data) and the reference code's MNIST_FPN beside fpnets (issue 11), within one 10-minute call.
#
#   bash benchmarks/gpu.sh               # CUDA; deadline GPU_SH_BUDGET=540 s (call it with timeout_s=600)
#   bash benchmarks/gpu.sh --cpu-smoke   # the same steps, tiny (--reduced, --limit 200), on the CPU
#
# Output, in "$OUT" when set, else ./gpu-results: at most 8 files (what the device tool returns):
#   summary.txt      steps (ok / FAILED / TIMEOUT / skipped, seconds) and the tables of every step
#   gpu.log          this script's log, then every step's full output
#   epoch_time.json  the rows of all epoch-time steps merged (each row names its step): Table 2
#   vs_reference.json  {"vs_reference": ..., "vs_reference_epoch": ...}: vs_reference.py's JSON per step
#   backward_modes.json, memory_depth.json   when those ran
#   nvidia-smi.txt   nvidia-smi, when there is one
#   raw.tar.gz       everything else: per-step JSON and logs, env.txt, plots
# Every step runs under `timeout`, capped by what is left of the deadline; a step that no longer
# fits is skipped, so one slow or broken step cannot eat the budget.
#
# Steps, in this order (GPU: seconds allowed, the timeout; epoch_time.py stops timing at --budget =
# that − 45; * = required: its failure makes the exit status 1):
#   env                       ~15  python/torch/CUDA facts, nvidia-smi
#   epoch_mnist*               60  epoch_time.py --models mnist   (fpn, jacobian, explicit; 30 steps after 10)
#   epoch_svhn*               110  epoch_time.py --models svhn
#   epoch_cifar10*            140  epoch_time.py --models cifar10
#   vs_reference               90  vs_reference.py --network both --steps 60 --rounds 2 --warmup 10 --eval
#                                  (needs MNIST and the reference code, else skipped)
#   vs_reference_epoch        100  vs_reference.py --network paper --epoch (one MNIST epoch end to end per side)
#   backward_modes             45  benchmarks/backward_modes.py --quick (if present and MNIST data found)
#   memory_depth               45  benchmarks/memory_depth.py --quick   (if present and MNIST data found)
#   epoch_cifar10_nchw         40  cifar10 fpn+explicit without channels-last (optional)
#   epoch_cifar10_bf16         40  cifar10 fpn+explicit under bf16 autocast (optional)
# Python: $PYTHON, else the first of python3, .venv/bin/python, python that imports torch (with
# CUDA unless --cpu-smoke) and fpnets (+ numpy, safetensors) from src/ via PYTHONPATH; nothing is
# installed unless GPU_SH_PIP_INSTALL=1 (then pip install -e . offline: --no-deps where torch is
# there, else from wheels in .whl/). GPU_SH_SKIP="name ..." skips steps; GPU_SH_STEP_SCALE=N multiplies
# every step's timeout (a slow or shared CPU; the deadline still holds).
# Data (none on a bare GPU machine: copy them into the repo's ignored shared/ folder and carry it,
# see docs/traffic.md, "Running on a GPU"): MNIST (IDX files) from $MNIST_DIR, shared/data/mnist,
# ../shared/data/mnist or data/mnist; the reference code (Networks.py) from $PEER_DIR,
# shared/peers/jfb-reference or ../shared/peers/jfb-reference (paths relative to the repo root, never
# absolute: a test compares what the script finds with what the repo holds). $GPU_COMMIT (the commit, when the copy has no .git) goes to env.txt.
# Exit status: 1 if a required step failed or did not fit, 2 for a bad argument, else 0.

set -u
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1

MODE=gpu
for arg in "$@"; do
    case "$arg" in
        --cpu-smoke) MODE=cpu ;;
        -h | --help) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "gpu.sh: unknown argument $arg (use --cpu-smoke or nothing)" >&2; exit 2 ;;
    esac
done

OUT="${OUT:-$ROOT/gpu-results}"
mkdir -p "$OUT" || exit 1
OUT="$(cd "$OUT" && pwd)"
RAW="$OUT/raw"
rm -rf "$RAW" && mkdir -p "$RAW" || exit 1
rm -f "$OUT"/{summary.txt,gpu.log,epoch_time.json,vs_reference.json,backward_modes.json,memory_depth.json,nvidia-smi.txt,raw.tar.gz}
LOG="$OUT/gpu.log"
: >"$LOG"
SUMMARY=()
FAILED_REQUIRED=0
if [ "$MODE" = cpu ]; then TOTAL="${GPU_SH_BUDGET:-150}"; else TOTAL="${GPU_SH_BUDGET:-540}"; fi

say() { echo "[gpu.sh $(printf '%3d' "$SECONDS")s] $*" | tee -a "$LOG"; }

# run_step NAME WANT_SECONDS REQUIRED(0/1) CMD...: run CMD under timeout min(WANT, time left), log to $RAW/NAME.log
STEP_LIMIT=0
step_limit() {  # sets STEP_LIMIT; returns 1 when the step no longer fits
    local want=$(($1 * ${GPU_SH_STEP_SCALE:-1})) left=$((TOTAL - SECONDS - 15))
    STEP_LIMIT=$((want < left ? want : left))
    [ "$STEP_LIMIT" -ge 20 ]
}
run_step() {
    local name=$1 want=$2 required=$3
    shift 3
    case " ${GPU_SH_SKIP:-} " in
        *" $name "*) say "$name: skipped (GPU_SH_SKIP)"; SUMMARY+=("$name: skipped (GPU_SH_SKIP)"); return 0 ;;
    esac
    if ! step_limit "$want"; then
        say "$name: SKIPPED (deadline: $((TOTAL - SECONDS)) s left of $TOTAL)"
        SUMMARY+=("$name: skipped (no time left)")
        [ "$required" = 1 ] && FAILED_REQUIRED=1
        return 0
    fi
    local start=$SECONDS rc
    say "$name: start (timeout ${STEP_LIMIT}s): $*"
    timeout --kill-after=10 "$STEP_LIMIT" "$@" >"$RAW/$name.log" 2>&1
    rc=$?
    local took=$((SECONDS - start)) what="ok"
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then what="TIMEOUT after ${STEP_LIMIT}s"; elif [ "$rc" != 0 ]; then what="FAILED rc=$rc"; fi
    say "$name: $what (${took}s)"
    [ "$rc" != 0 ] && tail -n 5 "$RAW/$name.log" | sed 's/^/    /' | tee -a "$LOG"
    SUMMARY+=("$name: $what, ${took}s")
    if [ "$required" = 1 ] && [ "$rc" != 0 ]; then FAILED_REQUIRED=1; fi
    return 0
}

# ---------------------------------------------------------------------------------------------- python
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# One interpreter start does it all: torch (with CUDA unless --cpu-smoke), fpnets from src/, the facts.
PROBE='
import os, platform, sys, torch
if sys.argv[1] == "gpu":
    assert torch.cuda.is_available(), "torch without CUDA"
import fpnets, fpnets.data, fpnets.train  # numpy, safetensors, tomllib
print("python", sys.version.split()[0], platform.platform())
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
print("cuda available", torch.cuda.is_available(), "devices", torch.cuda.device_count())
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"device {i}: {p.name}, {p.total_memory / 2**30:.1f} GiB, {p.multi_processor_count} SMs")
print("cpus", os.cpu_count(), "fpnets", fpnets.__file__)
'
PY=""
probe() { command -v "$1" >/dev/null 2>&1 && timeout 90 "$1" -c "$PROBE" "$MODE" >"$RAW/env.txt" 2>&1; }
for cand in ${PYTHON:-} python3 "$ROOT/.venv/bin/python" python; do
    if probe "$cand"; then PY="$cand"; break; fi
    [ -s "$RAW/env.txt" ] && say "python: $cand: $(tail -n 1 "$RAW/env.txt")"
done
if [ -z "$PY" ] && [ "${GPU_SH_PIP_INSTALL:-0}" = 1 ]; then  # opt-in: install from the local copy, offline
    say "python: none usable; GPU_SH_PIP_INSTALL=1: pip install from the local copy (no index; wheels in .whl/ if any)"
    LINKS=()
    [ -d "$ROOT/.whl" ] && LINKS=(--find-links "$ROOT/.whl")
    for cand in ${PYTHON:-} python3; do
        command -v "$cand" >/dev/null 2>&1 || continue
        if timeout 60 "$cand" -c "import torch" >/dev/null 2>&1; then  # keep its torch: fpnets alone
            timeout 120 "$cand" -m pip install --no-index --no-build-isolation --no-deps -e . >>"$RAW/pip.log" 2>&1
        else
            timeout 240 "$cand" -m pip install --no-index --no-build-isolation ${LINKS[@]+"${LINKS[@]}"} -e . >>"$RAW/pip.log" 2>&1
        fi
        if probe "$cand"; then PY="$cand"; break; fi
    done
fi
if [ -z "$PY" ]; then
    say "python: no interpreter with torch$([ "$MODE" = gpu ] && echo ' + CUDA') and fpnets; last: $(tail -n 1 "$RAW/env.txt" 2>/dev/null)"
    [ -f "$RAW/pip.log" ] && tail -n 20 "$RAW/pip.log" >>"$LOG"
    exit 1
fi
say "mode $MODE, python $(command -v "$PY"), out $OUT, deadline ${TOTAL}s"

# ---------------------------------------------------------------------------------------------- environment
echo "commit ${GPU_COMMIT:-$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)}" >>"$RAW/env.txt"
git -C "$ROOT" status --porcelain --untracked-files=no >>"$RAW/env.txt" 2>/dev/null
if command -v nvidia-smi >/dev/null 2>&1; then
    timeout 30 nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
    timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv \
        >>"$OUT/nvidia-smi.txt" 2>&1
fi
sed 's/^/    /' "$RAW/env.txt" | tee -a "$LOG"

# ---------------------------------------------------------------------------------------------- steps
ET=(benchmarks/epoch_time.py)
if [ "$MODE" = cpu ]; then
    COMMON=(--device cpu --reduced --batch 2 --threads 1)
    budget_for() { echo 0; }
else
    COMMON=(--device cuda --steps 30 --warmup 10)
    budget_for() {  # timing stops at the budget: 45 s left for start-up, building, counting (less if short)
        if [ "$1" -ge 90 ]; then echo $(($1 - 45)); else echo $(($1 / 2)); fi
    }
fi

epoch_step() {  # epoch_step NAME WANT REQUIRED ARGS...
    local name=$1 want=$2 required=$3
    shift 3
    step_limit "$want"
    local budget
    budget=$(budget_for "$STEP_LIMIT")
    run_step "$name" "$want" "$required" "$PY" "${ET[@]}" "${COMMON[@]}" --budget "$budget" \
        --json "$RAW/$name.json" "$@"
}

# Table 2 of the paper: MNIST, SVHN, CIFAR-10 (required, first).
if [ "$MODE" = cpu ]; then
    epoch_step epoch_mnist 40 1 --models mnist
    epoch_step epoch_svhn 60 1 --models svhn
    epoch_step epoch_cifar10 60 1 --models cifar10
else
    epoch_step epoch_mnist 60 1 --models mnist
    epoch_step epoch_svhn 110 1 --models svhn
    epoch_step epoch_cifar10 140 1 --models cifar10
fi

# Real data: MNIST and the reference implementation's code.
first_dir() {  # first_dir FILE_OR_EMPTY DIR...: the first DIR that exists (and holds FILE when given)
    local need=$1 d
    shift
    for d in "$@"; do
        [ -n "$d" ] && [ -d "$d" ] || continue
        if [ -n "$need" ]; then [ -f "$d/$need" ] || continue; elif [ -z "$(ls -A "$d" 2>/dev/null)" ]; then continue; fi
        (cd "$d" && pwd)
        return 0
    done
    return 1
}
MNIST="$(first_dir "" "${MNIST_DIR:-}" shared/data/mnist ../shared/data/mnist data/mnist)"
PEER="$(first_dir Networks.py "${PEER_DIR:-}" shared/peers/jfb-reference ../shared/peers/jfb-reference)"
say "data: MNIST ${MNIST:-not found}; reference code ${PEER:-not found}"

# The reference code's MNIST_FPN beside fpnets (benchmarks/vs_reference.py): training steps on the
# same batches from the same weights, both networks, and eval throughput; then one epoch end to end.
if [ -z "$MNIST" ] || [ -z "$PEER" ]; then
    for name in vs_reference vs_reference_epoch; do
        say "$name: needs MNIST (MNIST_DIR) and the reference code (PEER_DIR); skipped"
        SUMMARY+=("$name: skipped (no MNIST or reference code)")
    done
else
    VS=(benchmarks/vs_reference.py --data-dir "$MNIST" --peer-dir "$PEER")
    if [ "$MODE" = cpu ]; then
        VS+=(--device cpu --threads 1 --limit 200)
        run_step vs_reference 90 0 "$PY" "${VS[@]}" --network paper --steps 2 --rounds 1 --warmup 1 --eval \
            --json "$RAW/vs_reference.json"
        run_step vs_reference_epoch 90 0 "$PY" "${VS[@]}" --network paper --steps 1 --rounds 1 --warmup 0 \
            --epoch --json "$RAW/vs_reference_epoch.json"
    else
        VS+=(--device cuda)
        run_step vs_reference 90 0 "$PY" "${VS[@]}" --network both --steps 60 --rounds 2 --warmup 10 --eval \
            --json "$RAW/vs_reference.json"
        run_step vs_reference_epoch 100 0 "$PY" "${VS[@]}" --network paper --steps 10 --rounds 1 --warmup 2 \
            --epoch --json "$RAW/vs_reference_epoch.json"
    fi
fi

# The MNIST benchmarks of backward modes and memory, written alongside: run them with whatever
# smoke flags they offer.
src=""
has() { grep -q -- "\"$1\"" <<<"$src"; }  # does the script define option $1 (add_argument("$1", ...))?
for bench in backward_modes memory_depth; do
    script="benchmarks/$bench.py"
    if [ ! -f "$script" ]; then
        say "$bench: $script not present, skipped"
        SUMMARY+=("$bench: not present")
        continue
    fi
    src="$(cat "$script")"
    args=()
    if has "--data-dir"; then
        if [ -z "$MNIST" ]; then
            say "$bench: needs MNIST (--data-dir) and none was found (set MNIST_DIR), skipped"
            SUMMARY+=("$bench: skipped (no MNIST data)")
            continue
        fi
        args+=(--data-dir "$MNIST")
    fi
    if [ "$MODE" = cpu ] && has "--reduced"; then args+=(--reduced); elif has "--quick"; then args+=(--quick); fi
    if has "--device"; then
        if [ "$MODE" = cpu ]; then args+=(--device cpu); else args+=(--device cuda); fi
    fi
    if [ "$MODE" = cpu ] && has "--threads"; then args+=(--threads 1); fi
    if has "--json"; then args+=(--json "$RAW/$bench.json"); fi
    if has "--png"; then args+=(--png "$RAW/$bench.png"); fi
    if [ "$MODE" = cpu ]; then want=30; else want=45; fi
    run_step "$bench" "$want" 0 "$PY" "$script" ${args[@]+"${args[@]}"}
done

# Optional extras, only while time is left.
if [ "$MODE" = cpu ]; then
    SUMMARY+=("epoch_cifar10_nchw, epoch_cifar10_bf16: GPU only")
else
    epoch_step epoch_cifar10_nchw 40 0 --models cifar10 --variants fpn,explicit --no-channels-last
    epoch_step epoch_cifar10_bf16 40 0 --models cifar10 --variants fpn,explicit --amp bf16
fi

# ---------------------------------------------------------------------------------------------- summary
"$PY" - "$RAW" "$OUT" <<'EOF' >>"$LOG" 2>&1
import json, sys
from pathlib import Path

raw, out = Path(sys.argv[1]), Path(sys.argv[2])
merged = {"synthetic_data": True, "extrapolated": True, "sources": {}, "rows": []}
for name in ("epoch_mnist", "epoch_svhn", "epoch_cifar10", "epoch_cifar10_nchw", "epoch_cifar10_bf16"):
    path = raw / f"{name}.json"
    if not path.is_file():
        continue
    data = json.loads(path.read_text())
    merged["sources"][name] = {"command": data.get("command"), "env": data.get("env")}
    for row in data["rows"]:
        merged["rows"].append({"step": name, **row})
(out / "epoch_time.json").write_text(json.dumps(merged, indent=2))
print(f"merged {len(merged['rows'])} epoch-time rows into {out / 'epoch_time.json'}")
vs = {name: json.loads((raw / f"{name}.json").read_text())
      for name in ("vs_reference", "vs_reference_epoch") if (raw / f"{name}.json").is_file()}
if vs:
    (out / "vs_reference.json").write_text(json.dumps(vs, indent=2))
    print(f"wrote {', '.join(vs)} into {out / 'vs_reference.json'}")
EOF

for bench in backward_modes memory_depth; do
    [ -f "$RAW/$bench.json" ] && cp "$RAW/$bench.json" "$OUT/"
done
{
    echo
    echo "=== gpu.sh summary ($MODE mode, $SECONDS s of ${TOTAL} s) ==="
    for line in ${SUMMARY[@]+"${SUMMARY[@]}"}; do echo "  $line"; done
    for name in epoch_mnist epoch_svhn epoch_cifar10 epoch_cifar10_nchw epoch_cifar10_bf16 vs_reference \
        vs_reference_epoch; do
        if [ -f "$RAW/$name.log" ] && grep -q '^|' "$RAW/$name.log"; then
            echo
            echo "--- $name ---"
            grep '^|' "$RAW/$name.log"
        fi
    done
} | tee "$OUT/summary.txt" | tee -a "$LOG"
for f in "$RAW"/*.log; do
    [ -f "$f" ] || continue
    printf '\n\n==================== %s ====================\n' "$(basename "$f")" >>"$LOG"
    cat "$f" >>"$LOG"
done
tar -czf "$OUT/raw.tar.gz" -C "$OUT" raw && rm -rf "$RAW"
echo "files in $OUT: $(cd "$OUT" && echo *)" | tee -a "$OUT/summary.txt"

exit "$FAILED_REQUIRED"
