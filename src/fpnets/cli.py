"""The ``fpnets`` command: ``fpnets train``, ``fpnets eval``, ``fpnets config``.

``fpnets train`` with no arguments trains the default digits FPN (scikit-learn's 8×8 digits, no
download) and prints its validation and test accuracy. Errors in what was asked for (a bad config,
missing data files, a missing checkpoint) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

EXIT_USAGE = 2

_EXTRAS = {
    "safetensors": "train",
    "tqdm": "train",
    "matplotlib": "train",
    "sklearn": "train",
    "scipy": "train",
    "h5py": "ct",
}
"""Optional modules and the extra that installs each."""


def _is_main() -> bool:
    return os.environ.get("RANK", "0") in ("", "0")


def _pct(value: float | None) -> str:
    return (
        "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}%"
    )


def _say(*parts: Any) -> None:
    if _is_main():
        print(*parts, flush=True)


def _common_overrides(args: argparse.Namespace) -> list[str]:
    sets = list(args.set or [])
    if getattr(args, "device", None):
        sets.append(f"run.device={json.dumps(args.device)}")
    if getattr(args, "dtype", None):
        sets.append(f"run.dtype={json.dumps(args.dtype)}")
    if getattr(args, "threads", None) is not None:
        sets.append(f"run.threads={args.threads}")
    if getattr(args, "quiet", False):
        sets.append("run.progress=false")
    return sets


def _resolve_train(args: argparse.Namespace) -> tuple[Any, Path | None]:
    """The config and the run directory to resume (None for a new run)."""
    from .train import latest_run, load_config, resolve
    from .train._checkpoint import manifest_path, read_manifest

    sets = _common_overrides(args)
    if args.resume is None:
        return load_config(args.config, sets), None
    if isinstance(args.resume, str):
        run = Path(args.resume)
        if args.run_dir is not None and Path(args.run_dir).resolve() != run.resolve():
            raise ValueError(
                f"--resume {args.resume} and --run-dir {args.run_dir} name different runs; "
                "give the run to resume once (--resume RUN)"
            )
    elif args.run_dir is not None:
        run = Path(args.run_dir)
    else:
        config = load_config(args.config, sets)
        return config, latest_run(config)
    if args.config is not None:
        return load_config(args.config, sets), run
    stored = read_manifest(manifest_path(run, "last"))["config"]
    return resolve(stored, sets, source=str(run)), run


def _value(metric: Any, value: float | None) -> str:
    if metric.percent:
        return _pct(value)
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4g}"


def _scores(metrics: Sequence[Any], stats: dict[str, Any], prefix: str = "") -> str:
    return " ".join(f"{m.name} {_value(m, stats.get(prefix + m.name))}" for m in metrics)


def _summary(label: str, metrics: Sequence[Any], stats: dict[str, Any], details: str) -> str:
    """``"<label> <metric> <value> ... (<details>)"``."""
    return " ".join(p for p in (label, _scores(metrics, stats), f"({details})") if p)


def _loss(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def _epoch_line(rec: dict[str, Any], metrics: Sequence[Any]) -> str:
    width = len(str(rec["epochs"]))
    parts = [f"epoch {rec['epoch']:>{width}}/{rec['epochs']}"]
    for split in ("train", "val"):
        scores = _scores(metrics, rec, f"{split}_")
        parts.append(f"{split} loss {_loss(rec[f'{split}_loss'])}" + (f" {scores}" if scores else ""))
    if rec.get("train_iters") is not None:
        parts.append(f"iters {rec['train_iters']:.1f}")
    parts.append(f"{rec['samples_per_s']:,.0f} samples/s")
    parts.append(f"{rec['epoch_s']:.1f}s" + (" *" if rec.get("best") else ""))
    return "  ".join(parts)


def cmd_train(args: argparse.Namespace) -> int:
    from .train import train

    config, resume = _resolve_train(args)
    quiet = args.quiet
    metrics = config.task_class.metrics

    def on_start(info: dict[str, Any]) -> None:
        if quiet or info["rank"] != 0:
            return
        sizes = info.get("data", {})
        what = "resuming" if resume is not None else "training"
        print(
            f"{what} {config.run_name}: {info.get('parameters', 0):,} parameters, "
            f"{sizes.get('train', '?')}/{sizes.get('val', '?')}/{sizes.get('test', '?')} train/val/test, "
            f"{info.get('device')} {info.get('dtype')}"
            + (f" x{info['world_size']}" if info.get("world_size", 1) > 1 else "")
            + (f", from epoch {info['start_epoch']}" if resume is not None else "")
            + f" -> {info['run_dir']}",
            flush=True,
        )

    def on_epoch_end(rec: dict[str, Any]) -> None:
        if not quiet and rec["rank"] == 0:
            print(_epoch_line(rec, metrics), flush=True)

    result = train(
        config,
        run_dir=None if resume is not None else args.run_dir,
        resume=resume,
        data_dir=args.data_dir,
        on_start=on_start,
        on_epoch_end=on_epoch_end,
    )
    stop = ", stopped early" if result.stopped_early else ""
    val, test = result.val, result.test
    _say(
        f"best epoch {result.best_epoch} of {len(result.history)}{stop}: "
        + _summary("val", metrics, val, f"loss {_loss(val['loss'])}")
    )
    _say(_summary("test", metrics, test, f"loss {_loss(test['loss'])}, n={test['n']}"))
    _say(f"run directory: {result.run_dir}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .train import evaluate_checkpoint

    stats = evaluate_checkpoint(
        args.checkpoint,
        split=args.split,
        data_dir=args.data_dir,
        device=args.device or "auto",
        dtype=args.dtype,
    )
    if args.json:
        _say(json.dumps(stats))
    else:
        from .train import config_from_dict, load_checkpoint

        metrics = config_from_dict(load_checkpoint(args.checkpoint, "best").meta["config"]).task_class.metrics
        iters = f", mean iterations {stats['iters']:.2f}" if stats["iters"] is not None else ""
        details = f"loss {_loss(stats['loss'])}, n={stats['n']}{iters}; epoch {stats['epoch']}, {stats['checkpoint']}"
        _say(_summary(args.split, metrics, stats, details))
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from .train import bundled_dir, bundled_names, load_config

    if args.list:
        for name in bundled_names():
            _say(f"{name:24s} {bundled_dir() / (name + '.toml')}")
        return 0
    sys.stdout.write(load_config(args.config, list(args.set or [])).to_toml())
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="fpnets", description="Fixed Point Networks trained with Jacobian-Free Backprop."
    )
    parser.add_argument("--version", action="version", version=f"fpnets {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add_set(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--set",
            metavar="KEY=VALUE",
            action="append",
            help="override a config value, e.g. --set train.epochs=5 --set model.variant=jacobian "
            '(values are TOML: numbers, true/false, "strings", [lists]; repeatable)',
        )

    t = sub.add_parser(
        "train",
        help="train a model (default: the digits FPN)",
        description="Train a model. CONFIG is a TOML file or a bundled name (default digits; "
        "`fpnets config --list` lists them: the classification configs, ct-ellipses, games, "
        "traffic-siouxfalls, ...).",
    )
    t.add_argument(
        "config", nargs="?", metavar="CONFIG", help="config file or bundled name (default: digits)"
    )
    add_set(t)
    t.add_argument("--data-dir", metavar="DIR", help="where the dataset files are (default: $FPNETS_DATA)")
    t.add_argument(
        "--resume",
        nargs="?",
        const=True,
        metavar="RUN",
        help="continue the run in directory RUN from its last checkpoint; without RUN, the newest run "
        "of CONFIG under run.root",
    )
    t.add_argument(
        "--run-dir", metavar="DIR", help="directory of the new run (default: runs/<name>-<timestamp>)"
    )
    t.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default: auto (CUDA when available)")
    t.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default: torch's choice)")
    t.add_argument("--dtype", choices=("float32", "float64"), help="default: float32")
    t.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser(
        "eval",
        help="evaluate a saved model",
        description="Evaluate the best checkpoint of a run directory (or a checkpoint manifest .json).",
    )
    e.add_argument("checkpoint", metavar="CHECKPOINT_OR_RUN_DIR")
    e.add_argument("--data-dir", metavar="DIR", help="where the dataset files are (default: $FPNETS_DATA)")
    e.add_argument("--split", choices=("val", "test"), default="test", help="default: test")
    e.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default: auto")
    e.add_argument("--dtype", choices=("float32", "float64"), help="default: the run's")
    e.add_argument("--json", action="store_true", help="print the numbers as JSON")
    e.set_defaults(func=cmd_eval)

    c = sub.add_parser("config", help="print a resolved config, or list the bundled ones")
    c.add_argument(
        "config", nargs="?", metavar="CONFIG", help="config file or bundled name (default: digits)"
    )
    add_set(c)
    c.add_argument("--list", action="store_true", help="list the bundled configs")
    c.set_defaults(func=cmd_config)
    return parser


def _expected_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [ValueError, FileNotFoundError, NotADirectoryError, PermissionError]
    try:
        from .train import WriteError

        errors.append(WriteError)
    except ImportError:  # pragma: no cover
        pass
    try:
        from .data import DataError

        errors.append(DataError)
    except ImportError:  # pragma: no cover - the data package is part of fpnets
        pass
    return tuple(errors)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fpnets`` console script and of ``python -m fpnets``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    if getattr(args, "threads", None) is not None and args.threads < 0:
        parser.error("--threads must be >= 0")
    try:
        return int(args.func(args) or 0)
    except ModuleNotFoundError as exc:
        extra = _EXTRAS.get((exc.name or "").split(".")[0])
        if extra is None:
            raise
        print(
            f"fpnets: error: `fpnets {args.command}` needs the optional module {exc.name!r}: "
            f"pip install 'fpnets[{extra}]'",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_USAGE
    except _expected_errors() as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__  # one line, however long
        print(f"fpnets: error: {message}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("fpnets: interrupted", file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
