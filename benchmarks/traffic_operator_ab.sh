#!/usr/bin/env bash
# End-to-end A/B of a change to the traffic N-FPN: the shipped traffic configs trained for a few
# epochs with the package of an OLD commit and of this checkout, one run after the other, on the
# same cached data. Keeps each run's metrics.csv, results.json, run.json and config.toml (epoch_s,
# iterations, errors) in OUT/<tag>/. Nothing else may run on the machine meanwhile.
#
#   bash benchmarks/traffic_operator_ab.sh OLD_COMMIT DATA_DIR OUT [sf] [ema EMA_CACHE] [fr FR_CACHE]
#
# sf: traffic-siouxfalls as shipped, 5 epochs, old/new twice alternating (data in the default cache);
# ema, fr: traffic-ema / traffic-friedrichshain at 1,000 / 100 / 200 contexts, 2 epochs, new then
# old, the data set in the given cache directory (docs/traffic.md gives the commands that make it).
# SF_EPOCHS and EPOCHS override the 5 and 2 epochs (a quick check of the script itself).
set -euo pipefail
old=$1 data=$2 out=$3
shift 3
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${FPNETS_VENV:-$root/.venv}/bin/python"
work="$(mktemp -d)"
trap 'git -C "$root" worktree remove --force "$work/old" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
git -C "$root" worktree add -q --detach "$work/old" "$old"
mkdir -p "$out"
run() { # tag package-source config options...
    local tag=$1 src=$2 cfg=$3
    shift 3
    (cd "$root" && PYTHONPATH="$src" "$py" -m fpnets train "$cfg" --data-dir "$data" --threads 2 \
        --run-dir "$work/$tag" --quiet --set run.tensorboard=false "$@") >"$out/$tag.log" 2>&1
    mkdir -p "$out/$tag"
    cp "$work/$tag"/{metrics.csv,results.json,run.json,config.toml} "$out/$tag/"
    echo "$tag: load $(cut -d' ' -f1-3 /proc/loadavg) after"
}
small="--set train.epochs=${EPOCHS:-2} --set data.n_train=1000 --set data.n_val=100 --set data.n_test=200"
while [ $# -gt 0 ]; do
    case $1 in
    sf)
        for i in 1 2; do
            run "sf-old-$i" "$work/old/src" traffic-siouxfalls --set train.epochs="${SF_EPOCHS:-5}"
            run "sf-new-$i" "$root/src" traffic-siouxfalls --set train.epochs="${SF_EPOCHS:-5}"
        done
        shift
        ;;
    ema | fr)
        cfg=traffic-ema
        [ "$1" = fr ] && cfg=traffic-friedrichshain
        # shellcheck disable=SC2086
        run "$1-new-1" "$root/src" "$cfg" $small --set "data.cache_dir=\"$2\""
        # shellcheck disable=SC2086
        run "$1-old-1" "$work/old/src" "$cfg" $small --set "data.cache_dir=\"$2\""
        shift 2
        ;;
    *)
        echo "unknown part $1 (sf, ema DIR, fr DIR)" >&2
        exit 2
        ;;
    esac
done
