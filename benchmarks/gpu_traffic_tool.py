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
        net,
        model.costs(net, G["contexts"][lo:hi]),
        gap=G["gap"],
        max_iter=500,
        sweeps=G["sweeps"],
        newton=G["newton"],
        paths=G["paths"],
        throw=True,
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

    def calibrate(network: Any, params: Any, **options: Any) -> Any:
        model, contexts = tdata.draw_contexts(network, params, n_max)  # (N, m): a prefix-stable stream
        G.update(network=network, model=model, params=params, gap=params.gap, contexts=contexts)
        # the config's solver settings (data.sweeps, data.newton), as build_dataset passes them
        G.update(sweeps=options["sweeps"], newton=options["newton"])
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
