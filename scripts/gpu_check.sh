#!/usr/bin/env bash
# GPU check: the pytest tests marked `cuda`, then the benchmark targets on CUDA in
# float32 and under bf16 autocast, summarised in one table. Meant for one GPU and under
# 5 minutes. Without a visible CUDA GPU it says so and exits 0 (nothing to check).
#
# Usage: scripts/gpu_check.sh [OUTPUT_DIR]     (default: gpu-check/)
#   PYTHON=/path/to/python  interpreter with torch and concatnets (default: python)
#   GPU_CHECK_TIMEOUT=280   seconds allowed for the two benchmark runs together
set -euo pipefail

PYTHON=${PYTHON:-python}
OUT=${1:-gpu-check}
BUDGET=${GPU_CHECK_TIMEOUT:-280}
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: SKIPPED: torch sees no CUDA GPU (torch.cuda.is_available() is False)"
    exit 0
fi
"$PYTHON" -c 'import torch; print("gpu_check:", torch.cuda.get_device_name(0), "torch", torch.__version__)'
mkdir -p "$OUT"

set +e
"$PYTHON" -m pytest -q -m cuda -p no:cacheprovider tests >"$OUT/pytest.txt" 2>&1
PYTEST_RC=$?
set -e
tail -n 1 "$OUT/pytest.txt" | sed 's/^/gpu_check: pytest -m cuda: /'

START=$SECONDS
for AMP in fp32 bf16; do
    LEFT=$((BUDGET - (SECONDS - START)))
    ARGS=(--preset targets --modes naive,efficient --no-torchvision --device cuda
          --steps 3 --warmup 1 --output "$OUT/$AMP")
    [ "$AMP" = bf16 ] && ARGS+=(--amp bf16)
    set +e
    timeout "$LEFT" "$PYTHON" -m concatnets.bench memory "${ARGS[@]}" \
        >"$OUT/$AMP.md" 2>"$OUT/$AMP.log"
    echo "gpu_check: bench memory ${AMP}: exit $? (log: $OUT/$AMP.log)"
    set -e
done

"$PYTHON" - "$OUT" <<'PY'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
print()
print("| config | precision | mode | CUDA allocated MiB | x naive | CUDA reserved MiB "
      "| x naive | live MiB | x naive | step s | time x naive |")
print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")


def ratio(value):
    return "" if value is None else f"{value:.2f}x"


for precision in ("fp32", "bf16"):
    path = out / precision / "results.json"
    if not path.exists():
        print(f"| (no results) | {precision} | | | | | | | | | |")
        continue
    for r in json.loads(path.read_text())["results"]:
        c = r["config"]
        name = f"{c['label']} b{c['batch']} {c['image_size']}px"
        if r["status"] != "ok":
            print(f"| {name} | {precision} | {c['mode']} | {r['status']} | | | | | | | |")
            continue
        print(
            f"| {name} | {precision} | {c['mode']} | {r['peak_growth_mib']:.0f} "
            f"| {ratio(r.get('memory_ratio'))} | {r.get('cuda_reserved_peak_growth_mib') or 0:.0f} "
            f"| {ratio(r.get('cuda_reserved_ratio'))} | {r.get('live_peak_mib') or 0:.0f} "
            f"| {ratio(r.get('live_ratio'))} | {r['median_step_s']:.4f} "
            f"| {ratio(r.get('time_ratio'))} |"
        )
PY
exit "$PYTEST_RC"
