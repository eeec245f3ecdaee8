#!/usr/bin/env bash
# flax_attn on an accelerator, in one go: what experiments/results/gpu_h200/README.md
# reports for one H200 (TPU_SETUP.md, "GPUs", says how to run it). Needs the package's dependencies and torch importable by python3.
#
#   bash experiments/accelerator_check.sh OUT_DIR MULTI30K_DIR [SECONDS]
#
# Stages, each bounded so that the whole run ends within SECONDS (default 585):
#   env      versions, devices, and the error of a float32 matmul under each precision
#   smoke    dates:tiny trained end to end (train, checkpoint, final evaluation); a
#            failure here stops the script
#   m30k     experiments/configs/multi30k.py trained in bfloat16 (TPU_SETUP's GPU
#            command), in the background, then test2016 from best/ with the config's own decoding
#   tests    the model, parity, decoding, training and checkpoint tests on the
#            accelerator with float32 matmuls at "highest" precision, and the parity
#            tests (tests/test_grad_parity.py) again at jax's default precision (while m30k trains: its wall time
#            is an upper bound)
#   bench    benchmark.py against the PyTorch peers on the same GPU: float32 (ieee),
#            then flax_attn bfloat16 against torch TF32, then against torch.compile
#            if time is left
# Everything lands in OUT_DIR/results.tar.gz (logs, metrics.jsonl, JSON lines) and
# OUT_DIR/timeline.txt.
set -u
OUT=${1:?usage: accelerator_check.sh OUT_DIR MULTI30K_DIR [SECONDS]}
DATA=${2:?usage: accelerator_check.sh OUT_DIR MULTI30K_DIR [SECONDS]}
BUDGET=${3:-585}
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1   # several processes share the GPU
mkdir -p "$OUT"
S=$(mktemp -d)
T0=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
stamp() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$OUT/timeline.txt"; }
pack() {  # logs and figures only: checkpoints would make the archive hundreds of MB
  cp "$OUT/timeline.txt" "$S/" 2>/dev/null
  tar czf "$OUT/results.tar.gz" -C "$S" --exclude=smoke_run --exclude=m30k_bf16 .
}
bounded() {  # bounded RESERVE_S LOG CMD...: CMD with a timeout leaving RESERVE_S of the budget
  local reserve=$1 log=$2; shift 2
  local t=$(( $(left) - reserve )); (( t < 10 )) && { stamp "skipped (no time): $*"; return 124; }
  timeout -k 5 "$t" "$@" > "$S/$log" 2>&1; local rc=$?
  stamp "rc=$rc ($(( $(date +%s) - T0 ))s) $log: $*"; return $rc
}

stamp "env"
bounded 540 env.txt python3 - <<'EOF'
import importlib.metadata as md, subprocess
import numpy as np, jax, jax.numpy as jnp
print(subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip())
for p in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "chex", "grain", "torch", "numpy"):
  try: print(p, md.version(p))
  except md.PackageNotFoundError: print(p, "missing")
print("devices", jax.devices(), jax.devices()[0].device_kind)
rng = np.random.default_rng(0)
a, b = rng.standard_normal((2, 1024, 1024), dtype=np.float32)
exact = a.astype(np.float64) @ b.astype(np.float64)
rel = lambda y: float(np.abs(np.asarray(y, np.float64) - exact).max() / np.abs(exact).max())
for prec in (None, "tensorfloat32", "highest"):
  with jax.default_matmul_precision(prec) if prec else jax.default_matmul_precision("default"):
    print(f"jax matmul precision {prec or 'default (unset)'}: max rel error {rel(jax.jit(jnp.matmul)(a, b)):.2e}")
import torch
print("torch cuda", torch.cuda.is_available(), torch.backends.cuda.matmul.allow_tf32,
      torch.backends.cudnn.allow_tf32)
print(f"torch cuda matmul default: max rel error {rel((torch.from_numpy(a).cuda() @ torch.from_numpy(b).cuda()).cpu()):.2e}")
EOF

stamp "smoke"
if ! bounded 440 smoke.log python3 experiments/train.py --config experiments/configs/dates.py:tiny \
    --workdir "$S/smoke_run"; then
  stamp "smoke failed: stopping"; tail -40 "$S/smoke.log"; pack; exit 1
fi

stamp "m30k (background)"
M=$S/m30k_bf16
( bounded 150 m30k_train.log python3 experiments/train.py --config experiments/configs/multi30k.py \
    --workdir "$M" --config.data_dir="$DATA" --config.model.dtype=bfloat16 \
    --config.progress_bar=False \
  && bounded 130 m30k_test_beam10.log python3 experiments/evaluate.py --workdir "$M" --which best \
    --split test ) &
TRAIN=$!

stamp "tests (highest precision)"
JAX_DEFAULT_MATMUL_PRECISION=highest FLAX_ATTN_REQUIRE_TORCH=1 bounded 320 tests_highest.log \
  python3 -m pytest -v -n 4 -p no:cacheprovider -rfs tests/test_grad_parity.py tests/test_model.py \
  tests/test_attention.py tests/test_deferred.py tests/test_beam.py tests/test_loss.py \
  tests/test_convert.py tests/test_torch_hoisted.py tests/test_train.py tests/test_checkpoint.py
stamp "tests (default precision)"
FLAX_ATTN_REQUIRE_TORCH=1 bounded 250 tests_default.log \
  python3 -m pytest -v -n 4 -p no:cacheprovider -rfs tests/test_grad_parity.py

wait $TRAIN
cp "$M/metrics.jsonl" "$S/m30k_metrics.jsonl" 2>/dev/null
cp "$M"/*.png "$S/" 2>/dev/null
pack

stamp "bench ieee"
bounded 65 bench_ieee.jsonl python3 experiments/benchmark.py --torch_device cuda --fp32_matmul ieee \
  --peers torch_tutorial,torch_hoisted --matmul_n 8192 --repeats 10 --json
stamp "bench bf16 vs tf32"
bounded 5 bench_bf16.jsonl python3 experiments/benchmark.py --torch_device cuda --fp32_matmul tf32 \
  --dtype bfloat16 --peers torch_tutorial,torch_hoisted --matmul_n 8192 --repeats 20 --json
stamp "bench torch.compile (what time is left)"
bounded 5 bench_compiled.jsonl python3 experiments/benchmark.py --torch_device cuda --fp32_matmul tf32 \
  --dtype bfloat16 --what train,greedy --peers torch_hoisted_compiled --matmul_n 8192 --repeats 20 --json
stamp "done"
pack
