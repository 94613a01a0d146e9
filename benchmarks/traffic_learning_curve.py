"""Traffic: how the Sioux Falls error falls with the number of training contexts (issue 10).

The paper trained on 5,000 contexts; the CPU config on 1,000. This script trains one variant of the
``traffic-siouxfalls`` config (standardised, the config's settings) on the first n contexts of a
data set with ``--pool`` training contexts (``data.limit = n``; the validation and test splits are
the same for every n), for each n of ``--sizes``, and records the whole-set relative error, TRAFIX
and mean Wardrop gap on both splits (selection on validation, as always) with the training time.
Equal epochs for every n, so larger n also means more steps.

    python benchmarks/traffic_learning_curve.py --data-dir ../shared/data --variant explicit \\
        --sizes 250,500,1000,2000,5000 --out benchmarks/results/traffic_learning_curve.json
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command_line, environment, script_parser, write_json


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--data-dir", required=True, help="holds transportation-networks/ (or the network)")
    parser.add_argument("--variant", default="explicit")
    parser.add_argument("--sizes", default="250,500,1000,2000,5000")
    parser.add_argument("--pool", type=int, default=5000, help="data.n_train of the data set drawn from")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], help="more config overrides (KEY=VALUE)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    from fpnets.train import load_config, train

    sizes = [int(n) for n in args.sizes.split(",")]
    if max(sizes) > args.pool:
        raise SystemExit(f"--sizes: {max(sizes)} exceeds --pool {args.pool}")
    rows = []
    for n in sizes:
        cfg = load_config(
            "traffic-siouxfalls",
            [
                f"model.variant={json.dumps(args.variant)}",
                f"data.n_train={args.pool}",
                f"data.limit={n}",
                f"train.epochs={args.epochs}",
                f"run.threads={args.threads}",
                "run.tensorboard=false",
                "run.progress=false",
                *args.set,
            ],
        )
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            result = train(cfg, run_dir=Path(tmp) / "run", data_dir=args.data_dir, progress=False)
            seconds = time.perf_counter() - start
            metrics = json.loads((result.run_dir / "traffic_metrics.json").read_text())
        row = {"n_train": n, "best_epoch": result.best_epoch, "seconds": seconds}
        for split in ("val", "test"):
            m = metrics[split]
            row[split] = {
                "rel_error_total": m["relative_error_total"],
                "rel_error_mean": m["relative_error"],
                "trafix": m["trafix"],
                "wardrop_gap_mean": m["wardrop_gap"]["mean"],
            }
        print(row, flush=True)
        rows.append(row)
    write_json(
        args.out,
        {
            "command": command_line(),
            "environment": environment(),
            "result": {"variant": args.variant, "rows": rows},
        },
    )


if __name__ == "__main__":
    main()
