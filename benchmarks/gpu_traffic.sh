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
#   train_<net>_<variant>  `fpnets.train.train` on CUDA for GPU_TRAFFIC_VARIANTS (default "averaged
#                   nfpn explicit"), all variants of a network at once in the background: two
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
# The Python side, written out once: gen (parallel data generation into fpnets' cache), train
# (calibrated epochs to a deadline), baseline, merge. It uses fpnets' public API, and replaces
# fpnets.tasks.traffic.data.generate (the function build_dataset calls) by a parallel one, so the
# parameters, cache name and file format stay build_dataset's own.
write_tool() {
    cat >"$1" <<'PYEOF'
"""benchmarks/gpu_traffic.sh's helper: gen, train, baseline, merge (JSON to --json)."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

PAPER = {  # McKenzie et al. 2021, Table (traffic): relative error, TRAFIX (their targets: not equilibria)
    "SiouxFalls": (1.91e-3, 0.971),
    "EMA": (4.7e-4, 0.978),
    "friedrichshain-center": (5.4e-4, 0.968),
    "berlin-tiergarten": (7.6e-4, 0.959),
    "Anaheim": (2.4e-3, 0.953),
}


def dump(path: str, obj: Any) -> None:
    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, (np.floating, np.integer)):
            return clean(v.item())
        if isinstance(v, Path):
            return str(v)
        return v

    Path(path).write_text(json.dumps(clean(obj), indent=1) + "\n")


def config(args: argparse.Namespace, extra: list[str] = ()) -> Any:
    from fpnets.train import load_config

    sets = [*args.set, f"data.cache_dir={json.dumps(args.cache)}", *extra]
    return load_config(args.config, sets)


# ------------------------------------------------------------------------------ gen


class Missing(Exception):
    """build_dataset found no cache and would generate."""


class Calibrated(Exception):
    pass


G: dict[str, Any] = {}  # set before the pool forks: network, contexts, target gap; per worker: paths


def solve_rows(span: tuple[int, int]) -> tuple[int, int, np.ndarray, np.ndarray, float, int]:
    """Equilibria of contexts [lo, hi) (worker side; one path set per worker process, kept)."""
    from fpnets.tasks.traffic.assignment import PathSet, solve_equilibrium

    lo, hi = span
    net, model = G["network"], G["model"]
    if "paths" not in G:
        G["paths"] = PathSet(net)
    t = time.perf_counter()
    res = solve_equilibrium(
        net, model.costs(net, G["contexts"][lo:hi]), gap=G["gap"], max_iter=500, paths=G["paths"], throw=True
    )
    return lo, hi, res.link_flow, res.gap, time.perf_counter() - t, len(G["paths"])


def cmd_gen(args: argparse.Namespace) -> int:
    import fpnets.tasks.traffic.data as tdata

    t_start = time.perf_counter()
    deadline = t_start + args.seconds
    base = config(args)
    sizes = {k: getattr(base.data, k) for k in ("n_train", "n_val", "n_test")}
    n_max = sum(sizes.values())
    out: dict[str, Any] = {
        "config": args.config,
        "sets": list(args.set),
        "requested": sizes,
        "workers": args.workers,
    }
    original = tdata.generate

    def dataset(cut: dict[str, int], gen: Any) -> Any:
        tdata.generate = gen
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a stale cache is rebuilt: by `gen`
                sets = [f"data.{k}={v}" for k, v in cut.items()]
                return config(args, sets).make_task().dataset(args.data_dir)
        finally:
            tdata.generate = original

    def missing(network: Any, params: Any, **_: Any) -> Any:
        raise Missing

    try:
        data = dataset(sizes, missing)
        out.update(cached=True, paper_size=True, **sizes)
        out.update(network=data.network.name, cache=str(data.path), generation_seconds=data.seconds)
        out.update(
            target_gap=data.params.gap,
            max_gap=float(max(float(s.gap.max()) for s in (data.train, data.val, data.test) if len(s))),
        )
        out["train_sets"] = [f"data.{k}={v}" for k, v in sizes.items()]
        dump(args.json, out)
        print(f"cached: {data.path}")
        return 0
    except Missing:
        pass

    def calibrate(network: Any, params: Any, **_: Any) -> Any:
        model, contexts = tdata.draw_contexts(network, params, n_max)  # (N, m): a prefix-stable stream
        G.update(network=network, model=model, params=params, gap=params.gap, contexts=contexts)
        raise Calibrated

    with contextlib.suppress(Calibrated):
        dataset(sizes, calibrate)
    params = G["params"]
    probe = min(args.calibrate, max(1, n_max // (2 * args.workers)))
    solved: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    seconds: list[float] = []
    ctx = multiprocessing.get_context("fork")
    pool = ctx.Pool(args.workers)
    try:
        t0 = time.perf_counter()
        spans = [(i * probe, (i + 1) * probe) for i in range(args.workers)]
        for lo, _hi, x, g, s, _ in pool.imap_unordered(solve_rows, spans):
            solved[lo] = (x, g)
            seconds.append(s)
        t_cal = time.perf_counter() - t0
        done = args.workers * probe
        rate = done / t_cal  # contexts per second, all workers (the first chunks: the slowest)
        left = deadline - time.perf_counter() - 3.0
        n_fit = done + int(0.85 * rate * max(left, 0.0))
        n_total = min(n_max, n_fit)  # fewer than n_val + n_test + min_train: smaller val/test below
        if args.strict:
            n_total, deadline = n_max, math.inf
        out.update(
            calibration={"contexts": done, "seconds": t_cal, "contexts_per_s": rate}, planned_total=n_total
        )
        print(
            f"calibration: {done} contexts in {t_cal:.1f}s ({rate:.1f}/s); planned {n_total} of {n_max}",
            flush=True,
        )
        spans = [(lo, min(lo + args.chunk, n_total)) for lo in range(done, n_total, args.chunk)]
        it = pool.imap_unordered(solve_rows, spans)
        for _ in spans:
            try:
                wait = None if args.strict else max(deadline - time.perf_counter(), 0.1)
                lo, _hi, x, g, s, npaths = it.next(timeout=wait)
            except multiprocessing.TimeoutError:
                print("deadline: stopping the generation", flush=True)
                break
            solved[lo] = (x, g)
            seconds.append(s)
            out["paths_per_worker_max"] = max(out.get("paths_per_worker_max", 0), npaths)
    finally:
        pool.terminate()
        pool.join()
    # the longest solved prefix of the stream
    rows, x_parts, g_parts = 0, [], []
    while rows in solved:
        x, g = solved[rows]
        x_parts.append(x)
        g_parts.append(g)
        rows += len(g)
    cut = dict(sizes)
    if rows < sizes["n_val"] + sizes["n_test"] + args.min_train:  # too few for whole val/test splits
        each = max(1, rows // 5)
        cut.update(n_val=min(sizes["n_val"], each), n_test=min(sizes["n_test"], each))
    cut["n_train"] = min(sizes["n_train"], rows - cut["n_val"] - cut["n_test"])
    if cut["n_train"] < 1:
        print(f"only {rows} contexts solved: too few for three splits", file=sys.stderr)
        return 1
    n_train, n_all = cut["n_train"], sum(cut.values())
    flows, gaps = np.concatenate(x_parts), np.concatenate(g_parts)
    t_gen = time.perf_counter() - t_start

    def assemble(network_: Any, params_: Any, **_: Any) -> Any:
        model, d = tdata.draw_contexts(network_, params_)
        n = d.shape[0]
        if not (np.array_equal(model.weight, G["model"].weight) and np.array_equal(d, G["contexts"][:n])):
            raise RuntimeError("the contexts of the cut data set are not a prefix of the generated ones")
        return model, d, flows[:n], gaps[:n]

    data = dataset(cut, assemble)
    # the cache is what the trainer will read: it must load without generating
    check = dataset(cut, missing)
    out.update(cached=False, network=check.network.name, cache=str(check.path), **cut)
    out.update(generation_seconds=t_gen)
    out.update(contexts=rows, contexts_per_s=rows / t_gen, cpu_seconds_per_context=sum(seconds) / rows)
    out.update(target_gap=params.gap, max_gap=float(gaps[:n_all].max()))
    out["paper_size"] = cut == sizes
    out["train_sets"] = [f"data.{k}={v}" for k, v in cut.items()]
    dump(args.json, out)
    print(
        f"{data.network.name}: {n_train}/{cut['n_val']}/{cut['n_test']} contexts in {t_gen:.1f}s -> {data.path}"
    )
    return 0


# ------------------------------------------------------------------------------ train


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from fpnets.train import train

    t_start = time.perf_counter()
    deadline = t_start + args.seconds
    records: list[dict[str, Any]] = []
    marks: list[float] = []

    def on_epoch_end(rec: dict[str, Any]) -> None:
        records.append({k: v for k, v in rec.items() if isinstance(v, (int, float, bool, str)) or v is None})
        marks.append(time.perf_counter())
        print(
            f"epoch {rec['epoch']}: val rel_error {rec.get('val_rel_error')} iters {rec.get('train_iters')} "
            f"{rec['epoch_s']:.1f}s",
            flush=True,
        )

    fixed = [f"model.variant={json.dumps(args.variant)}", f"run.device={json.dumps(args.device)}"]
    fixed += ["run.progress=false", "run.tensorboard=false"]
    if args.threads:
        fixed.append(f"run.threads={args.threads}")
    cfg = config(args, [*fixed, f"train.epochs={args.calibration_epochs}"])
    cap = min(config(args, fixed).train.epochs, args.max_epochs or 10**9)
    out: dict[str, Any] = {
        "config": args.config,
        "variant": args.variant,
        "sets": [*args.set, *fixed],
        "device": args.device,
        "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
        "network": cfg.data.network,
        "sizes": {k: getattr(cfg.data, k) for k in ("n_train", "n_val", "n_test")},
        "epochs_cap": cap,
        "deadline_s": args.seconds,
    }

    def report(result: Any, phase: str) -> None:
        run = Path(result.run_dir)
        metrics = run / "traffic_metrics.json"
        out.update(
            phase=phase,
            run_dir=str(run),
            parameters=sum(p.numel() for p in result.model.parameters()),
            epochs=len(result.history),
            best_epoch=result.best_epoch,
            val=result.val,
            test=result.test,
            set_metrics=json.loads(metrics.read_text()) if metrics.is_file() else None,
            epoch_seconds=[r["epoch_s"] for r in records],
            train_iters=[r.get("train_iters") for r in records],
            val_rel_error=[r.get("val_rel_error") for r in records],
            wall_s=time.perf_counter() - t_start,
        )
        dump(args.json, out)

    result = train(cfg, run_dir=args.run_dir, data_dir=args.data_dir, on_epoch_end=on_epoch_end)
    t_done = time.perf_counter()
    finish = t_done - marks[-1]  # the final val + test evaluation, figures
    report(result, "calibration")
    per_epoch = 1.15 * max(r["epoch_s"] for r in records[-2:])
    left = deadline - t_done - 1.5 * finish - 5.0
    total = min(cap, args.calibration_epochs + int(max(left, 0.0) // per_epoch))
    out.update(finish_s=finish, planned_epochs=total)
    print(
        f"calibration: {per_epoch:.1f}s/epoch (x1.15), finish {finish:.1f}s; planned {total} epochs",
        flush=True,
    )
    if total > args.calibration_epochs:
        cfg = config(args, [*fixed, f"train.epochs={total}"])
        result = train(cfg, resume=result.run_dir, data_dir=args.data_dir, on_epoch_end=on_epoch_end)
        report(result, "done")
    else:
        report(result, "done")
    print(f"{args.variant}: {len(result.history)} epochs, test {result.test}")
    return 0


# ------------------------------------------------------------------------------ baseline


def cmd_baseline(args: argparse.Namespace) -> int:
    from fpnets.tasks.traffic.task import evaluate_baseline

    t = time.perf_counter()
    cfg = config(args, ["run.progress=false", "run.tensorboard=false"])
    results = evaluate_baseline(cfg, run_dir=args.run_dir, data_dir=args.data_dir)
    metrics = Path(args.run_dir) / "traffic_metrics.json"
    out = {
        "config": args.config,
        "variant": "mean-capacity",
        "network": cfg.data.network,
        "sizes": {k: getattr(cfg.data, k) for k in ("n_train", "n_val", "n_test")},
        "parameters": 0,
        "val": results["val"],
        "test": results["test"],
        "set_metrics": json.loads(metrics.read_text()) if metrics.is_file() else None,
        "wall_s": time.perf_counter() - t,
        "run_dir": args.run_dir,
        "phase": "done",
    }
    dump(args.json, out)
    return 0


# ------------------------------------------------------------------------------ merge


def cmd_merge(args: argparse.Namespace) -> int:
    raw = Path(args.raw)
    env = (raw / "env.txt").read_text() if (raw / "env.txt").is_file() else ""
    merged: dict[str, Any] = {"mode": args.mode, "env": env.splitlines(), "networks": {}}
    for path in sorted(raw.glob("*.json")):
        kind, _, rest = path.stem.partition("_")
        data = json.loads(path.read_text())
        net = rest.split("_")[0]
        entry = merged["networks"].setdefault(net, {"data": None, "runs": {}})
        if kind == "gen":
            entry["data"] = data
        elif kind in ("train", "baseline"):
            entry["runs"][data["variant"]] = data
    rows = []
    for net, entry in merged["networks"].items():
        gen = entry["data"] or {}
        name = gen.get("network", "")
        paper = PAPER.get(name)
        if paper:
            entry["paper"] = {"relative_error": paper[0], "trafix": paper[1]}
        for variant, run in entry["runs"].items():
            test = ((run.get("set_metrics") or {}).get("test")) or {}
            it = test.get("iterations") or {}
            secs = run.get("epoch_seconds") or []
            rows.append(
                [
                    net,
                    variant,
                    f"{run.get('parameters', 0):,}",
                    "/".join(str(run.get("sizes", {}).get(k, "?")) for k in ("n_train", "n_val", "n_test")),
                    f"{run.get('epochs', '–')} ({np.median(secs[1:] or secs):.1f} s)" if secs else "–",
                    f"{test['relative_error_total']:.3g}" if "relative_error_total" in test else "–",
                    f"{100 * test['trafix']:.1f}%" if "trafix" in test else "–",
                    f"{test['wardrop_gap']['mean']:.2g}" if "wardrop_gap" in test else "–",
                    f"{it['mean']:.0f} ({100 * it['converged']:.0f}%)" if it else "–",
                    f"{paper[0]:.2g} / {100 * paper[1]:.1f}%" if paper else "–",
                    run.get("phase", "?"),
                ]
            )
    header = [
        "network", "model", "parameters", "train/val/test", "epochs (median s/epoch)",
        "test ‖X̂ − X*‖_F/‖X*‖_F", "TRAFIX", "Wardrop gap (mean)", "iterations (converged)",
        "paper rel. error / TRAFIX", "status",
    ]  # fmt: skip
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    table += ["| " + " | ".join(r) + " |" for r in rows]
    merged["table"] = table
    dump(args.json, merged)
    print("\n".join(table))
    return 0


def main() -> int:
    p = argparse.ArgumentParser(prog="traffic_tool")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("gen", "train", "baseline"):
        s = sub.add_parser(name)
        s.add_argument("config")
        s.add_argument("--set", action="append", default=[])
        s.add_argument("--data-dir", required=True)
        s.add_argument("--cache", required=True)
        s.add_argument("--json", required=True)
        if name == "gen":
            s.add_argument("--workers", type=int, default=os.cpu_count() or 1)
            s.add_argument("--seconds", type=float, required=True, help="time for the whole generation")
            s.add_argument("--calibrate", type=int, default=8, help="contexts per worker in the calibration")
            s.add_argument("--chunk", type=int, default=50, help="contexts per task (one solve)")
            s.add_argument("--min-train", type=int, default=200)
            s.add_argument("--strict", action="store_true", help="solve every requested context (no cut)")
        else:
            s.add_argument("--run-dir", required=True)
        if name == "train":
            s.add_argument("--variant", required=True)
            s.add_argument("--device", default="cuda")
            s.add_argument("--seconds", type=float, required=True, help="time until the run must be done")
            s.add_argument("--calibration-epochs", type=int, default=2)
            s.add_argument("--max-epochs", type=int, default=0)
            s.add_argument("--threads", type=int, default=0)
    m = sub.add_parser("merge")
    m.add_argument("--raw", required=True)
    m.add_argument("--json", required=True)
    m.add_argument("--mode", required=True)
    args = p.parse_args()
    return {"gen": cmd_gen, "train": cmd_train, "baseline": cmd_baseline, "merge": cmd_merge}[args.cmd](args)


if __name__ == "__main__":
    raise SystemExit(main())
PYEOF
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
VARIANTS="${GPU_TRAFFIC_VARIANTS:-averaged nfpn explicit}"
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
