#!/usr/bin/env bash
# The accelerator rows of issue 16 in one call of a lent device machine (its image's JAX and torch,
# no package index, 15 device-minutes per session, 10 minutes per command):
#
#   bash benchmarks/on_device.sh            # on the device; logs under $OUT (default /tmp/on_device)
#   TINY=1 bash benchmarks/on_device.sh     # the same commands at tiny widths: a CPU check here
#
# Each benchmark runs under its own time limit, so that one that hangs or runs out of memory
# still leaves the others' tables; summary.txt gives each one's exit status and seconds. The
# limits add up to 520 s, inside one 600 s command. Paste the tables into benchmarks/RESULTS.md.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/on_device}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# The device gets the working tree without .venv: there the image's python runs.
if [ -x .venv/bin/python ]; then PY=${PY:-.venv/bin/python}; else PY=${PY:-python3}; fi

if [ -n "${TINY:-}" ]; then
  train=(--tiny --seconds 2 --rows 4 --steps 2 --warmup 1)
  decode=(--tiny --seconds 2 --gen-length 32 --repeats 1)
  whisper=(--attention xla dot_product --preset whisper_tiny_en --batch-sizes 1 --repeats 1)
else
  # tools/plan.py --meshes 1,1,1 --per-device-batch 8 --set remat=dots_saveable: 71.8 GB peak
  # (the CPU backend's upper bound), inside 0.92 of an H200's 141 GB.
  train=(--rows 8 --remat dots_saveable)
  decode=(--repeats 3)
  whisper=(--attention xla cudnn --preset whisper_large_v3 --dtype bfloat16 --batch-sizes 4
           --repeats 3)
fi

run() {  # name, seconds, JAX's share of GPU memory, script and arguments
  local name=$1 limit=$2 fraction=$3 start=$SECONDS
  shift 3
  XLA_PYTHON_CLIENT_MEM_FRACTION=$fraction timeout "$limit" "$PY" "$@" > "$OUT/$name.txt" 2>&1
  echo "$name: exit $? in $((SECONDS - start)) s" | tee -a "$OUT/summary.txt"
  tail -n 20 "$OUT/$name.txt"
}

{ date -u; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
  "$PY" -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"
  "$PY" -c "import torch; print('torch', torch.__version__)" 2>/dev/null
  # What the benchmarks import beyond JAX/flax; the image may lack some (no package index there).
  "$PY" -c "import importlib.util as u; print('missing:', [m for m in ('optax', 'orbax', 'soundfile',
    'soxr', 'transformers', 'tokenizers', 'safetensors') if u.find_spec(m) is None])"; } \
  | tee "$OUT/summary.txt"
# The train step wants all the memory it can get; decoding leaves room for its PyTorch loop's 16 GB.
run whisper 120 0.9 benchmarks/bench_whisper.py "${whisper[@]}"
run train 200 0.92 benchmarks/bench_train.py --shape llada8b "${train[@]}"
run decode 200 0.6 benchmarks/bench_decode.py --shape llada8b "${decode[@]}"
