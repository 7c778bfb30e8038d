#!/bin/bash
# Many short training runs side by side on one lent GPU (a recipe sweep at the CPU budget's
# iteration counts; GPU and CPU runs are not bit-identical, so a CPU run confirms what this shows).
# Usage on the device: bash benchmarks/gpu_sweep.sh RUNS_FILE [TIME_LIMIT_S]
# Each line of RUNS_FILE: NAME CONFIG MAX_ITERS SEED [KEY=VALUE ...]; lines starting with # are skipped.
# Each run: 1 torch thread + 1 loader worker, evaluation at 1/2 and at the end; its metrics.json,
# log.jsonl and output land in /tmp/sweep_out/NAME/, packed into $OUT/sweep.tgz when $OUT is set.
set -u
RUNS=$1
LIMIT=${2:-480}
OUTDIR=/tmp/sweep_out
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
if ls .whl/*.whl >/dev/null 2>&1 && ! $PY -c "import pycocotools" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=$PWD/src:/tmp/site
D=${DATA:-/tmp/masklab_gpu_data}
[ -d $D ] || $PY -m masklab data synth --out $D --num-train 2000 --num-val 60 --seed 0 | tail -1
T0=$(date +%s)
while read -r name config iters seed rest; do
  mkdir -p "$OUTDIR/$name"
  half=$(( iters / 2 ))
  # shellcheck disable=SC2086
  ( timeout "$LIMIT" $PY -m masklab train "$config" dataset.root=$D runtime.work_dir=/tmp/sweep/$name \
      runtime.seed=$seed runtime.device=${DEVICE:-cuda} runtime.num_threads=1 train.num_workers=1 \
      train.max_iters=$iters train.val_interval=$half train.checkpoint_interval=$iters --no-progress $rest \
      > "$OUTDIR/$name/out.txt" 2>&1
    cp /tmp/sweep/$name/metrics.json /tmp/sweep/$name/log.jsonl "$OUTDIR/$name/" 2>/dev/null
    echo "[t+$(( $(date +%s) - T0 ))s] $name done" ) &
done < <(grep -v -e '^#' -e '^ *$' "$RUNS")
wait
$PY - "$OUTDIR" <<'PY'
import json, sys
from pathlib import Path
for run in sorted(Path(sys.argv[1]).iterdir()):
    vals = []
    log = run / "log.jsonl"
    if log.exists():
        for line in log.read_text().splitlines():
            r = json.loads(line)
            if r.get("mode") == "val":
                m = {k: round(v, 4) if isinstance(v, float) else v for k, v in r.items() if k in ("iteration", "mIoU") or k.endswith("AP")}
                vals.append(m)
    print(run.name, vals if vals else (run / "out.txt").read_text().strip().splitlines()[-1:])
PY
[ -n "${OUT:-}" ] && tar -czf "$OUT/sweep.tgz" -C "$OUTDIR" .
