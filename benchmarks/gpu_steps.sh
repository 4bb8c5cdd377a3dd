# Shared by the GPU scripts (gpu_check.sh, gpu_fpo_dmc.sh, gpu_dsrl_fql.sh); source it after
# setting OUT (results), WORK (scratch), PYTHON and DEVICE.

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

throughput() {  # throughput NAME SECONDS [throughput.py options]: a table into results.md
  local name=$1 limit=$2; shift 2
  step "$name" "$limit" $PYTHON benchmarks/throughput.py --device "$DEVICE" --envs Hopper-v5 \
    --out "$WORK/$name.md" "$@"
  if [ -f "$WORK/$name.md" ]; then
    { echo "## $name"; echo; cat "$WORK/$name.md"; echo; } >> "$OUT/results.md"
  fi
}
