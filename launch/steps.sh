# Sourced by the bench_gpu*.sh scripts: `step NAME LIMIT_S CMD...` runs CMD
# with a time limit, logs to $out/NAME.log, prints its tail, and skips steps
# that would start with under 30 s of the script's $budget left.
step() {
  local name=$1 limit=$2; shift 2
  local start=$SECONDS left=$((budget - SECONDS))
  if (( left < 30 )); then
    echo "== $name: skipped, ${left}s of the ${budget}s budget left" \
      | tee -a "$out/steps.log"
    return
  fi
  (( limit > left )) && limit=$left
  echo "== $name (limit ${limit}s): $*" | tee -a "$out/steps.log"
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  grep -v -e Warning -e 'xla_bridge' -e '_schedule.py' "$out/$name.log" \
    | tail -n 25
  echo "== $name: rc=$rc, $((SECONDS - start)) s" | tee -a "$out/steps.log"
}
