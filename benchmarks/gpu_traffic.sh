#!/usr/bin/env bash
# The traffic N-FPN on the larger TNTP networks (issue 10), one prepared run on a lent GPU machine
# (one H200, 16 cores, no network, a copy of the repo) within one 10-minute call.
#
#   bash benchmarks/gpu_traffic.sh               # CUDA; deadline GPU_TRAFFIC_BUDGET=540 s (timeout_s=600)
#   bash benchmarks/gpu_traffic.sh --cpu-smoke   # the same steps, tiny, on the CPU (well under a minute)
#   options: --data-root DIR (the folder holding transportation-networks/), --write-tool FILE (write
#   the Python helper, see below, to FILE and exit), -h
#
# Per network (GPU_TRAFFIC_NETWORKS, default "ema friedrichshain tiergarten"; also "anaheim",
# "siouxfalls"; config traffic-<name>):
#   gen_<net>       the data set of the config (contexts, equilibria certified to data.gap), solved on
#                   all CPU cores at once (fork workers, each with its own path set); a calibration
#                   round measures contexts/s and n_train is cut to what fits the step's time
#                   (n_val, n_test kept unless too few contexts fit); the cache is fpnets' own (data.cache_dir), so training
#                   and a carried cache (GPU_TRAFFIC_CACHE) find it like `fpnets train` does
#   train_<net>_<variant>  `fpnets.train.train` on CUDA for GPU_TRAFFIC_VARIANTS (default
#                   "averaged-wide nfpn explicit"), all variants of a network at once in the background: two
#                   calibration epochs, then resumed (--resume semantics) to as many epochs as fit the
#                   deadline (at most the config's train.epochs); val-selected, tested once
#   baseline_<net>  the mean-capacity baseline (CPU)
# Timeline (GPU): env ~20 s; gen_ema ~110 s on all cores; then the EMA trainings run on the GPU while
# the next networks' data are generated on the remaining cores (~70 s each); every training ends by
# the deadline less 45 s; then the summary.
#
# Output, in "$OUT" when set, else ./gpu-results/traffic (at most 6 files):
#   summary.txt      steps (ok / FAILED / TIMEOUT / skipped, seconds) and the results table
#   traffic.json     everything: env, per network the data (sizes, seconds, contexts/s, max gap) and
#                    per variant the run (epochs, s/epoch, best epoch, val/test per-sample means, the
#                    paper's whole-set relative error, TRAFIX, Wardrop gap, iterations), the baseline
#   traffic.log      this script's log, then every step's full output
#   nvidia-smi.txt   when there is one
#   raw.tar.gz       per-step JSON and logs, the run folders (metrics.csv, plots; no checkpoints)
# Every step runs under `timeout`, capped by what is left of the deadline.
#
# Data: the TNTP networks from --data-root, $FPNETS_GPU_DATA, shared/data, ../shared/data
# or data (the first holding transportation-networks/Eastern-Massachusetts). On a
# bare GPU machine copy them into the repo's ignored shared/ folder (docs/traffic.md, "Running on a
# GPU"). Cache: $GPU_TRAFFIC_CACHE (a carried cache skips generation), else a temporary folder.
# Python: $PYTHON, else python3, .venv/bin/python, python (torch, CUDA unless --cpu-smoke, scipy,
# fpnets from src/). Knobs: GPU_TRAFFIC_SKIP="step ..." skips steps, GPU_TRAFFIC_VARIANTS,
# GPU_TRAFFIC_NETWORKS, GPU_TRAFFIC_GEN_SECONDS (time for the first network's data; the others get
# 70 % of it), GPU_TRAFFIC_WORKERS (default: all cores), $GPU_COMMIT (recorded when there is no .git).
# Exit status: 1 if no training of the first network ended with test results, 2 for a bad argument.

set -u
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1

MODE=gpu
DATA_ROOT="${FPNETS_GPU_DATA:-}"
WRITE_TOOL=""
while [ $# -gt 0 ]; do
    case "$1" in
        --cpu-smoke) MODE=cpu ;;
        --data-root)
            [ $# -ge 2 ] || { echo "gpu_traffic.sh: --data-root needs a folder" >&2; exit 2; }
            DATA_ROOT=$2
            shift
            ;;
        --write-tool)  # write the Python helper to a file and exit (tests use it)
            [ $# -ge 2 ] || { echo "gpu_traffic.sh: --write-tool needs a file" >&2; exit 2; }
            WRITE_TOOL=$2
            shift
            ;;
        -h | --help) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "gpu_traffic.sh: unknown argument $1 (use --cpu-smoke, --data-root DIR or nothing)" >&2; exit 2 ;;
    esac
    shift
done

now() { echo $(($(date +%s) - START_EPOCH)); }
say() { echo "[gpu_traffic.sh $(printf '%3d' "$(now)")s] $*" | tee -a "$LOG"; }
skipped() { case " ${GPU_TRAFFIC_SKIP:-} " in *" $1 "*) return 0 ;; esac; return 1; }

# run_step NAME WANT CMD...: CMD under timeout min(WANT, time left − 15) in the foreground
run_step() {
    local name=$1 want=$2 left limit start rc what
    shift 2
    left=$((TOTAL - $(now) - 15))
    limit=$((want < left ? want : left))
    if [ "$limit" -lt 10 ]; then
        say "$name: SKIPPED (deadline: $((TOTAL - $(now))) s left of $TOTAL)"
        SUMMARY+=("$name: skipped (no time left)")
        return 1
    fi
    start=$(now)
    say "$name: start (timeout ${limit}s): $*"
    timeout --kill-after=10 "$limit" "$@" >"$RAW/$name.log" 2>&1
    rc=$?
    what=ok
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then what="TIMEOUT after ${limit}s"; elif [ "$rc" != 0 ]; then what="FAILED rc=$rc"; fi
    say "$name: $what ($(($(now) - start))s)"
    [ "$rc" != 0 ] && tail -n 5 "$RAW/$name.log" | sed 's/^/    /' | tee -a "$LOG"
    SUMMARY+=("$name: $what, $(($(now) - start))s")
    return "$rc"
}

# bg_step NAME LIMIT CMD...: CMD under timeout LIMIT in the background; wait_bg collects them
BG_NAMES=()
BG_PIDS=()
bg_step() {
    local name=$1 limit=$2
    shift 2
    say "$name: start in the background (timeout ${limit}s): $*"
    (
        t0=$(date +%s)
        timeout --kill-after=10 "$limit" "$@" >"$RAW/$name.log" 2>&1
        echo "$? $(($(date +%s) - t0)) $limit" >"$RAW/$name.rc"
    ) &
    BG_NAMES+=("$name")
    BG_PIDS+=("$!")
}
wait_bg() {
    local i name rc took limit what
    for i in "${!BG_PIDS[@]}"; do
        wait "${BG_PIDS[$i]}"
        name=${BG_NAMES[$i]}
        read -r rc took limit <"$RAW/$name.rc" || { rc=1 took=0 limit=0; }
        what=ok
        if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then what="TIMEOUT after ${limit}s"; elif [ "$rc" != 0 ]; then what="FAILED rc=$rc"; fi
        say "$name: $what (${took}s)"
        [ "$rc" != 0 ] && tail -n 5 "$RAW/$name.log" | sed 's/^/    /' | tee -a "$LOG"
        SUMMARY+=("$name: $what, ${took}s")
    done
    BG_NAMES=()
    BG_PIDS=()
}

# ---------------------------------------------------------------------------------------------- the helper
# The Python side lives in benchmarks/gpu_traffic_tool.py: gen (parallel data generation into fpnets'
# cache), train (calibrated epochs to a deadline), baseline, merge. It uses fpnets' public API, and
# replaces fpnets.tasks.traffic.data.generate (the function build_dataset calls) by a parallel one,
# so the parameters, cache name and file format stay build_dataset's own. It is copied into the
# work folder (and into raw/), so a result carries the exact helper that made it.
write_tool() {
    cp "$ROOT/benchmarks/gpu_traffic_tool.py" "$1"
}
if [ -n "$WRITE_TOOL" ]; then
    write_tool "$WRITE_TOOL"
    exit
fi

OUT="${OUT:-$ROOT/gpu-results/traffic}"
mkdir -p "$OUT" || exit 1
OUT="$(cd "$OUT" && pwd)"
RAW="$OUT/raw"
rm -rf "$RAW" && mkdir -p "$RAW" || exit 1
rm -f "$OUT"/{summary.txt,traffic.json,traffic.log,nvidia-smi.txt,raw.tar.gz}
LOG="$OUT/traffic.log"
: >"$LOG"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_traffic.XXXXXX")" || exit 1
trap 'rm -rf "$WORK"' EXIT
CACHE="${GPU_TRAFFIC_CACHE:-$WORK/cache}"
SUMMARY=()
START_EPOCH=$(date +%s)
if [ "$MODE" = cpu ]; then TOTAL="${GPU_TRAFFIC_BUDGET:-150}"; else TOTAL="${GPU_TRAFFIC_BUDGET:-540}"; fi
CORES=$(nproc 2>/dev/null || echo 2)
WORKERS="${GPU_TRAFFIC_WORKERS:-$CORES}"

TOOL="$WORK/traffic_tool.py"
write_tool "$TOOL"

# ---------------------------------------------------------------------------------------------- python
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PROBE='
import os, platform, sys, torch
if sys.argv[1] == "gpu":
    assert torch.cuda.is_available(), "torch without CUDA"
import numpy, scipy, scipy.sparse.csgraph
import fpnets, fpnets.train, fpnets.tasks.traffic
print("python", sys.version.split()[0], platform.platform())
print("torch", torch.__version__, "cuda", torch.version.cuda, "numpy", numpy.__version__, "scipy", scipy.__version__)
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"device {i}: {p.name}, {p.total_memory / 2**30:.1f} GiB, {p.multi_processor_count} SMs")
print("cpus", os.cpu_count(), "fpnets", fpnets.__file__)
'
PY=""
for cand in ${PYTHON:-} python3 "$ROOT/.venv/bin/python" python; do
    if command -v "$cand" >/dev/null 2>&1 && timeout 90 "$cand" -c "$PROBE" "$MODE" >"$RAW/env.txt" 2>&1; then
        PY="$cand"
        break
    fi
    [ -s "$RAW/env.txt" ] && say "python: $cand: $(tail -n 1 "$RAW/env.txt")"
done
if [ -z "$PY" ]; then
    say "python: no interpreter with torch$([ "$MODE" = gpu ] && echo ' + CUDA'), scipy and fpnets"
    cp "$LOG" "$OUT/summary.txt"
    exit 1
fi
echo "commit ${GPU_COMMIT:-$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)}" >>"$RAW/env.txt"
git -C "$ROOT" status --porcelain --untracked-files=no >>"$RAW/env.txt" 2>/dev/null
if command -v nvidia-smi >/dev/null 2>&1; then
    timeout 30 nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
fi
sed 's/^/    /' "$RAW/env.txt" | tee -a "$LOG"

# ---------------------------------------------------------------------------------------------- data
if [ -z "$DATA_ROOT" ]; then
    for d in shared/data ../shared/data data; do
        if [ -d "$d/transportation-networks/Eastern-Massachusetts" ]; then DATA_ROOT=$d; break; fi
    done
fi
if [ -z "$DATA_ROOT" ] || [ ! -d "$DATA_ROOT/transportation-networks" ]; then
    say "data: no transportation-networks/ under --data-root, \$FPNETS_GPU_DATA, shared/data, ../shared/data or data"
    cp "$LOG" "$OUT/summary.txt"
    exit 1
fi
DATA_ROOT="$(cd "$DATA_ROOT" && pwd)"
say "mode $MODE, python $(command -v "$PY"), data $DATA_ROOT, cache $CACHE, $CORES cores, deadline ${TOTAL}s"

# ---------------------------------------------------------------------------------------------- sizes
if [ "$MODE" = cpu ]; then
    NETWORKS="${GPU_TRAFFIC_NETWORKS:-ema}" # one network: every kind of step; add one to test the next
    DEVICE=cpu
    GEN_FIRST="${GPU_TRAFFIC_GEN_SECONDS:-40}"
    SETS=(--set data.n_train=8 --set data.n_val=4 --set data.n_test=4 --set data.batch_size=4
        --set data.eval_batch_size=8 --set solver.max_iter=10)
    GEN_ARGS=(--calibrate 2 --chunk 6 --min-train 4 --strict) # all requested contexts, however slow
    TRAIN_ARGS=(--max-epochs 3 --threads 1)
    MIN_TRAIN_WINDOW=10
    export OMP_NUM_THREADS=1
else
    NETWORKS="${GPU_TRAFFIC_NETWORKS:-ema friedrichshain tiergarten}"
    DEVICE=cuda
    GEN_FIRST="${GPU_TRAFFIC_GEN_SECONDS:-110}"
    SETS=()
    GEN_ARGS=()
    TRAIN_ARGS=(--threads 1)
    MIN_TRAIN_WINDOW=60
fi
VARIANTS="${GPU_TRAFFIC_VARIANTS:-averaged-wide nfpn explicit}"
END_TRAIN=$((TOTAL - 45)) # every training is done by then (its own deadline; timeout 30 s later)
[ "$MODE" = cpu ] && END_TRAIN=$((TOTAL - 20))
GEN_OTHERS=$((GEN_FIRST * 7 / 10))
T=("$PY" "$TOOL")
COMMON=(--data-dir "$DATA_ROOT" --cache "$CACHE")

first=""
FIRST_OK=0
for net in $NETWORKS; do
    cfg="traffic-$net"
    [ -n "$first" ] || first=$net
    if skipped "gen_$net"; then
        say "gen_$net: skipped (GPU_TRAFFIC_SKIP)"
        SUMMARY+=("gen_$net: skipped (GPU_TRAFFIC_SKIP)")
        continue
    fi
    # the first network's data get every core; later ones leave one core per running training
    if [ "$net" = "$first" ]; then gen_s=$GEN_FIRST workers=$WORKERS; else
        gen_s=$GEN_OTHERS
        workers=$((WORKERS - ${#BG_PIDS[@]} - 1))
        [ "$workers" -ge 2 ] || workers=2
    fi
    left=$((END_TRAIN - $(now) - MIN_TRAIN_WINDOW))
    [ "$gen_s" -le "$left" ] || gen_s=$left
    if [ "$gen_s" -lt 5 ]; then
        say "gen_$net: SKIPPED (no time left for data and training)"
        SUMMARY+=("gen_$net: skipped (no time left)")
        continue
    fi
    gen_want=$((gen_s + 40)) # the helper stops itself at gen_s; --strict (smoke) never does
    [ "$MODE" = cpu ] && gen_want=$TOTAL
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 run_step "gen_$net" "$gen_want" \
        "${T[@]}" gen "$cfg" ${SETS[@]+"${SETS[@]}"} "${COMMON[@]}" --json "$RAW/gen_$net.json" \
        --workers "$workers" --seconds "$gen_s" ${GEN_ARGS[@]+"${GEN_ARGS[@]}"} || continue
    CUT=() # the sizes generated: --set data.n_train=... (and n_val, n_test)
    while read -r s; do CUT+=(--set "$s"); done < <("$PY" -c \
        'import json, sys; print("\n".join(json.load(open(sys.argv[1]))["train_sets"]))' "$RAW/gen_$net.json")
    window=$((END_TRAIN - $(now)))
    if [ "$window" -lt "$MIN_TRAIN_WINDOW" ]; then
        say "train_$net: SKIPPED (${window}s left before the training deadline)"
        SUMMARY+=("train_$net: skipped (no time left)")
        continue
    fi
    for variant in $VARIANTS; do
        name="train_${net}_$variant"
        if skipped "$name"; then SUMMARY+=("$name: skipped (GPU_TRAFFIC_SKIP)"); continue; fi
        bg_step "$name" $((window + 30)) "${T[@]}" train "$cfg" ${SETS[@]+"${SETS[@]}"} "${CUT[@]}" \
            "${COMMON[@]}" --json "$RAW/train_${net}_$variant.json" --run-dir "$WORK/runs/$net-$variant" \
            --variant "$variant" --device "$DEVICE" --seconds "$window" ${TRAIN_ARGS[@]+"${TRAIN_ARGS[@]}"}
    done
    if ! skipped "baseline_$net"; then
        OMP_NUM_THREADS=1 bg_step "baseline_$net" $((window + 30)) "${T[@]}" baseline "$cfg" \
            ${SETS[@]+"${SETS[@]}"} "${CUT[@]}" "${COMMON[@]}" --json "$RAW/baseline_$net.json" \
            --run-dir "$WORK/runs/$net-mean-capacity"
    fi
done
wait_bg

# ---------------------------------------------------------------------------------------------- summary
for f in "$RAW"/train_"$first"_*.json; do  # a run of the first network with its test results?
    [ -f "$f" ] && grep -q '"relative_error_total"' "$f" && FIRST_OK=1
done
"$PY" "$TOOL" merge --raw "$RAW" --json "$OUT/traffic.json" --mode "$MODE" >"$RAW/merge.log" 2>&1 ||
    say "merge: FAILED: $(tail -n 3 "$RAW/merge.log")"
{
    echo
    echo "=== gpu_traffic.sh summary ($MODE mode, $(now) s of ${TOTAL} s; networks: $NETWORKS) ==="
    for line in ${SUMMARY[@]+"${SUMMARY[@]}"}; do echo "  $line"; done
    echo
    grep '^|' "$RAW/merge.log" 2>/dev/null
} | tee "$OUT/summary.txt" | tee -a "$LOG"
for f in "$RAW"/*.log; do
    [ -f "$f" ] || continue
    printf '\n\n==================== %s ====================\n' "$(basename "$f")" >>"$LOG"
    cat "$f" >>"$LOG"
done
if [ -d "$WORK/runs" ]; then  # the run folders, without checkpoints
    mkdir -p "$RAW/runs"
    (cd "$WORK/runs" && tar -cf - --exclude=checkpoints --exclude=tensorboard . ) | (cd "$RAW/runs" && tar -xf -)
fi
cp "$TOOL" "$RAW/"
tar -czf "$OUT/raw.tar.gz" -C "$OUT" raw && rm -rf "$RAW"
echo "files in $OUT: $(cd "$OUT" && echo *)" | tee -a "$OUT/summary.txt"

if [ "$FIRST_OK" = 1 ]; then exit 0; fi
say "no training of ${first:-any network} produced test results"
exit 1
