# Sourced by the bench_gpu*.sh scripts, first thing after `set -uo pipefail`:
# puts the repository on PYTHONPATH, sets $python and $repo and moves there.
# `need_args N $#` prints the script's header comment and exits 2 when it got
# fewer than N arguments. `from_caller PATH` is PATH made absolute against
# the directory the script was called from (it runs from the repository). `step NAME LIMIT_S CMD...` runs CMD with a time
# limit, logs to $out/NAME.log, prints its tail, and skips steps that would
# start with under 30 s of the script's $budget left.
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
caller_dir=$PWD
cd "$repo"

from_caller() {
  (cd "$caller_dir" && realpath -m -- "$1")
}

need_args() {
  if (( $2 < $1 )); then
    sed -n '2,/^set -uo/p' "$0" | sed '$d' >&2
    exit 2
  fi
}

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
