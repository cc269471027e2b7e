#!/usr/bin/env bash
# The GPU check (`make gpu-check`): everything a CPU-only CI cannot run, on one CUDA GPU, in
# under 8 minutes, every output in one folder. Parts (each bounded by `timeout`, so one hang
# does not take the whole run; a failed part is recorded and the next one runs):
#   1. env       GPU, driver, library versions
#   2. tests     every test marked `gpu` (CUDA training, the CUDA-graph capture of every method's
#                training forward, the CUDA Newton, Nash-MTL on CUDA)
#   3. bench     `namex bench step|gram|solvers --device cuda --quick`
#   4. medium    200 steps of the medium preset in bf16 for SMoE, EP-CAMEx, NAMEx-Full-Mom
#                (tokens/s, same run)
#   5. hf        a tiny Qwen2-MoE built from its config class, converted to NAMEx-Full-Mom and
#                fine-tuned for 20 steps on CUDA
#   6. compare   (optional, GPU_CHECK_FULL=1) the medium-preset comparison of the reproduction
#                study (studies/; long)
# Environment:
#   GPU_CHECK_OUT     output folder (default runs/gpu-check)
#   GPU_CHECK_DEVICE  cuda (default) or cpu: `GPU_CHECK_DEVICE=cpu GPU_CHECK_QUICK=1` runs the
#                     same script on a CPU with tiny sizes, to check it before a GPU run
#   GPU_CHECK_QUICK   1: tiny sizes (tiny preset, 4 steps)
#   GPU_CHECK_FULL    1: also part 6
#   GPU_CHECK_SLACK   multiplies every time limit (default 1; the CPU dry run on a loaded
#                     2-core machine needs about 4)
#   PY                the Python to use (default: .venv/bin/python if present, else python3)
# On a GPU machine without network (docs/gpu.md): wheels of the packages it lacks go in .whl/
# and are installed here into a private folder put on PYTHONPATH.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${GPU_CHECK_OUT:-runs/gpu-check}
DEV=${GPU_CHECK_DEVICE:-cuda}
QUICK=${GPU_CHECK_QUICK:-0}
FULL=${GPU_CHECK_FULL:-0}
SLACK=${GPU_CHECK_SLACK:-1}
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  SITE=${GPU_CHECK_SITE:-/tmp/namex-site}
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl \
    > "$OUT/wheels.log" 2>&1 || echo "wheel install failed: see $OUT/wheels.log"
  export PYTHONPATH="$SITE:$PYTHONPATH"
fi
NAMEX=("$PY" -m namex_ref.cli)
SUMMARY="$OUT/summary.md"
printf '# GPU check\n\n| part | status | seconds | log |\n|---|---|---|---|\n' > "$SUMMARY"

part() {  # part NAME LIMIT_S COMMAND...
  local name=$1 limit=$(($2 * SLACK))
  shift 2
  local t0=$SECONDS status
  echo "== $name (limit ${limit}s)"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  case $? in
    0) status=ok ;;
    124) status="timed out" ;;
    *) status=failed ;;
  esac
  echo "   $status in $((SECONDS - t0)) s"
  printf '| %s | %s | %d | %s.log |\n' "$name" "$status" $((SECONDS - t0)) "$name" >> "$SUMMARY"
}

if [ "$QUICK" = 1 ]; then
  PRESET=tiny; STEPS=4; LOG=2; EVAL=4; BATCH=2
else
  PRESET=medium; STEPS=200; LOG=20; EVAL=100; BATCH=16
fi

part env 60 bash -c "nvidia-smi || true; \"$PY\" -c 'import torch, sys; print(sys.version); \
print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, torch.cuda.is_available()); \
[print(torch.cuda.get_device_name(i)) for i in range(torch.cuda.device_count())]'"

part tests 240 "$PY" -m pytest -m gpu -p no:cacheprovider -q -rs tests/ \
  --junitxml="$OUT/gpu-tests.xml"

for b in step gram solvers; do
  part "bench-$b" 120 "${NAMEX[@]}" bench "$b" --device "$DEV" --quick --out "$OUT/bench"
done

for m in smoe ep-camex namex-full-mom; do
  part "train-$m" 150 "${NAMEX[@]}" train --preset "$PRESET" --method "$m" --steps "$STEPS" \
    --batch-size "$BATCH" --log-every "$LOG" --eval-every "$EVAL" --ckpt-every "$STEPS" \
    --eval-batches 4 --final-eval-batches 20 --precision bf16 --device "$DEV" --out "$OUT/train-$m"
done

part hf 150 bash -c "\"$PY\" tools/gpu_check_hf.py \"$OUT/hf-src\" && \
  \"${NAMEX[0]}\" -m namex_ref.cli train --hf-model \"$OUT/hf-src\" --method namex-full-mom \
  --steps 20 --batch-size 2 --seq-len 64 --log-every 5 --eval-every 10 --ckpt-every 20 \
  --eval-batches 2 --final-eval-batches 4 \
  --device \"$DEV\" --out \"$OUT/hf\""

if [ "$FULL" = 1 ]; then
  part compare 3600 "${NAMEX[@]}" compare --preset medium \
    --methods smoe,ep-camex,camex,namex-full-mom --seeds 0 --steps 2000 --precision bf16 \
    --device "$DEV" --out "$OUT/compare"
fi

"$PY" tools/gpu_check_report.py "$OUT" >> "$SUMMARY" 2>> "$OUT/report.log" \
  || echo "(report failed: see report.log)" >> "$SUMMARY"
echo "summary: $SUMMARY"
cat "$SUMMARY"
