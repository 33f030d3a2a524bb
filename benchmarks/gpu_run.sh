#!/usr/bin/env bash
# The GPU suite on a machine with no network, in two commands (see benchmarks/gpu_prepare.py, which fills .gpu/):
#   bash benchmarks/gpu_run.sh stage   # carry .gpu/carry1: keeps Ray's first part in /tmp/pixeldrl_gpu
#   bash benchmarks/gpu_run.sh run     # carry .gpu/carry2: joins and checks Ray, installs the wheels, runs the suite
# Results go to $OUT (the device tool's folder that comes back), else to ./gpu_out. GPU_DIR, GPU_STAGE and GPU_SITE
# move the carried folder, the staging folder and the install target (the test suite runs this script on a CPU).
set -uo pipefail
cd "$(dirname "$0")/.."
GPU_DIR="${GPU_DIR:-.gpu}"
STAGE="${GPU_STAGE:-/tmp/pixeldrl_gpu}"
SITE="${GPU_SITE:-/tmp/site}"
OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$STAGE" "$OUT"

case "${1:-}" in
stage)
    cp "$GPU_DIR/carry1/ray.part1" "$STAGE/" || exit 3
    ls -l "$STAGE"
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/nvidia_smi.txt"
    fi
    ;;
run)
    wheels=("$GPU_DIR"/carry2/wheels/*.whl)
    read -r sha name <"$GPU_DIR/carry2/ray.sha256"
    if [ -f "$STAGE/ray.part1" ]; then
        cat "$STAGE/ray.part1" "$GPU_DIR/carry2/ray.part2" >"$STAGE/$name"
        if echo "$sha  $STAGE/$name" | sha256sum -c -; then
            wheels+=("$STAGE/$name")
        else
            echo "Ray's parts do not join to the expected wheel: the suite runs without Ray" >&2
        fi
    else
        echo "no $STAGE/ray.part1 (run 'stage' first, within 30 s): the suite runs without Ray" >&2
    fi
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        "${wheels[@]}" || exit 3
    export PYTHONPATH="$SITE:$PWD" PYTHONUNBUFFERED=1
    data=()
    [ -d "$GPU_DIR/carry2/lgg_flair_fg" ] && data=(--data "$GPU_DIR/carry2/lgg_flair_fg")
    timeout 560 python3 -m benchmarks.gpu_suite --out "$OUT" "${data[@]}" "${@:2}" 2>&1 | tee "$OUT/stdout.txt" \
        | grep -v -E "^\(raylet|WARNING|INFO" | tail -c 10000
    rc=${PIPESTATUS[0]}
    rm -rf "$OUT"/quality_*/checkpoints "$OUT"/ray_runs  # only the JSON and logs come back
    exit "$rc"
    ;;
*)
    echo "usage: $0 stage|run [suite arguments]" >&2
    exit 2
    ;;
esac
