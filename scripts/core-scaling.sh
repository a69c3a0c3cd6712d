#!/usr/bin/env bash
# How one node scales with cores: for C in $CORES, one run of `boxoffice-load throughput --runs durable,none` with
# the node pinned to the first C allowed cores (scripts/pin-cores.sh: its tokio workers and arbiters follow the
# cores it may run on) and the load on every core above them. Prints orders/s, server CPU per order and the ratio
# of each step to the one before; reports go to $OUT/cores-C/, a summary to $OUT/summary.txt. Needs at least
# max(CORES) + $LOAD_CORES_MIN cores (a 16-core machine for the default "2 4 8").
#
#   BIN=target/release OUT=target/core-scaling CORES="2 4 8" scripts/core-scaling.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
OUT=${OUT:-target/core-scaling}
CORES=${CORES:-"2 4 8"}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
CONNECTIONS=${CONNECTIONS:-512}
LOAD_CORES_MIN=${LOAD_CORES_MIN:-4}
command -v taskset > /dev/null || { echo "taskset (util-linux) is needed" >&2; exit 1; }
allowed=()
export PIN_CORES_LIST
PIN_CORES_LIST=$(awk '/^Cpus_allowed_list/ {print $2}' /proc/self/status)
IFS=, read -ra ranges <<< "$PIN_CORES_LIST"
for range in "${ranges[@]}"; do
  allowed+=($(seq "${range%-*}" "${range#*-}"))
done
total=${#allowed[@]}
mkdir -p "$OUT"
export BOXOFFICE_BIN="$BIN/boxoffice"
summary="$OUT/summary.txt"
echo "cores: $total (${allowed[*]}); $CONNECTIONS connections; $(date -u +%FT%TZ)" > "$summary"
previous=""
for c in $CORES; do
  if [ $((c + LOAD_CORES_MIN)) -gt "$total" ]; then
    echo "skipping $c cores: too few left for the load" | tee -a "$summary"
    continue
  fi
  load_cores=$(IFS=,; echo "${allowed[*]:c}")
  echo "== node on cores ${allowed[*]:0:c}, load on $load_cores" | tee -a "$summary"
  log="$OUT/cores-$c.log"
  PIN_CORES_PER_NODE="$c" timeout 300 taskset -c "$load_cores" "$BIN/boxoffice-load" throughput \
    --spawn scripts/pin-cores.sh --runs durable,none --connections "$CONNECTIONS" \
    --seconds "$SECONDS_PER_RUN" --out "$OUT/cores-$c" > "$log" 2>&1 \
    || echo "the run on $c cores failed (see $log)" | tee -a "$summary"
  grep -E "orders/s \(" "$log" | sed 's/orders sent in all.*latency/latency/' | tee -a "$summary" || true
  durable=$(grep -E "^boxoffice serve --durability fsync:" "$log" | sed -E 's/.*fsync: ([0-9.]+) orders.*/\1/' || true)
  if [ -n "$durable" ] && [ -n "$previous" ]; then
    awk -v now="$durable" -v before="$previous" 'BEGIN { printf "durable orders/s against the step before: %.2fx\n", now / before }' \
      | tee -a "$summary"
  fi
  previous=$durable
done
cat "$summary"
