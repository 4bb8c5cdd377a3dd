# Shared by the GPU scripts (gpu_check.sh, gpu_fpo_dmc.sh, gpu_dsrl_fql.sh, gpu_scaling.sh,
# gpu_humanoid.sh); source it after setting OUT (results), WORK (scratch), PYTHON and DEVICE.

record_machine() {  # the GPU, torch (CUDA, NCCL) and JAX where installed, into $OUT/machine.txt
  {
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
    $PYTHON -c "
import importlib.util, torch
cuda = torch.cuda.is_available()
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', cuda,
      'nccl', cuda and torch.cuda.nccl.version())
if importlib.util.find_spec('jax'):
    import jax
    print('jax', jax.__version__, jax.devices())"
    echo "cores: $(nproc)"
  } > "$OUT/machine.txt" 2>&1
  cat "$OUT/machine.txt"
}

step() {  # step NAME SECONDS COMMAND...: one step under a time limit, its output in log.txt
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s): $*" | tee -a "$OUT/log.txt"
  local start=$SECONDS
  timeout "$limit" "$@" > "$WORK/$name.txt" 2>&1
  local rc=$?
  cat "$WORK/$name.txt" >> "$OUT/log.txt"
  tail -n 12 "$WORK/$name.txt"
  echo "=== $name: exit $rc after $((SECONDS - start))s" | tee -a "$OUT/log.txt"
}

table() {  # table NAME SECONDS SCRIPT [options]: a benchmark's --out table into results.md
  local name=$1 limit=$2 script=$3; shift 3
  step "$name" "$limit" $PYTHON "$script" --device "$DEVICE" --out "$WORK/$name.md" "$@"
  if [ -f "$WORK/$name.md" ]; then
    { echo "## $name"; echo; cat "$WORK/$name.md"; echo; } >> "$OUT/results.md"
  fi
}

throughput() {  # throughput NAME SECONDS [throughput.py options]: a table into results.md
  local name=$1 limit=$2; shift 2
  table "$name" "$limit" benchmarks/throughput.py --envs Hopper-v5 "$@"
}
