#!/usr/bin/env bash
# One device check: everything a GPU run must measure, in one call of the device machine.
#
#   bench/device_check.sh                       # on the GPU machine (torch with CUDA installed)
#   bench/device_check.sh --device cpu --tiny   # the dry run the tests do on CPU
#
# Options: --device cuda|cpu (default cuda), --tiny (toy sizes), --out DIR (default $OUT, else
# ./device-check), --wheels DIR (wheels to pip install first: foveal's dependencies missing there).
# Writes into DIR: environment.txt (date, nvidia-smi, versions), pytest_gpu.txt (pytest -m gpu),
# gpu_suite.md (bench/gpu_suite.py's table), and summary.txt (each step's exit code).
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=cuda; TINY=""; OUT_DIR="${OUT:-device-check}"; WHEELS=""
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE="$2"; shift 2 ;;
        --tiny) TINY="--tiny"; shift ;;
        --out) OUT_DIR="$2"; shift 2 ;;
        --wheels) WHEELS="$2"; shift 2 ;;
        *) echo "device_check.sh: unknown option $1 (expected --device, --tiny, --out, --wheels)" >&2; exit 2 ;;
    esac
done
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python}"
{
    date -u
    nvidia-smi 2>&1 || echo "nvidia-smi: not available"
    "$PY" -c "import sys, torch; print('python', sys.version.split()[0]); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
    "$PY" -c "import tensorrt; print('tensorrt', tensorrt.__version__)" 2>/dev/null || echo "tensorrt: not installed (the TensorRT tests and cases are skipped; give its wheels with --wheels)"
} > "$OUT_DIR/environment.txt" 2>&1
if [ -n "$WHEELS" ]; then
    "$PY" -m pip install -q --no-index --find-links "$WHEELS" -e . >> "$OUT_DIR/environment.txt" 2>&1
fi
"$PY" -m pytest -q -m gpu tests/gpu -p no:cacheprovider > "$OUT_DIR/pytest_gpu.txt" 2>&1
pytest_rc=$?
"$PY" bench/gpu_suite.py --device "$DEVICE" $TINY --out "$OUT_DIR/gpu_suite.md" > "$OUT_DIR/gpu_suite.log" 2>&1
suite_rc=$?
printf 'pytest -m gpu: exit %s\ngpu_suite: exit %s\n' "$pytest_rc" "$suite_rc" > "$OUT_DIR/summary.txt"
cat "$OUT_DIR/summary.txt"
[ "$pytest_rc" -eq 0 ] && [ "$suite_rc" -eq 0 ]
