#!/usr/bin/env bash
# How a cluster scales with nodes, on a machine with enough cores for each node to have its own: for N in $NODES,
# one run of `boxoffice-load throughput --runs durable,cluster` with one durable node on $PER_NODE cores against an
# N-node cluster whose node K runs on cores K*PER_NODE.. (scripts/pin-cores.sh), the load on the cores above them.
# Then, on every core, a burst of $COMPARE simultaneous orders against a 1.4 s provider on one node and on 3 nodes
# behind 2 fronts, and a burst of $BURST through 6 fronts and 7 client processes. Reports go to $OUT/<run>/; a
# summary to $OUT/summary.txt.
#
#   BIN=target/release OUT=target/cluster-scaling NODES="1 2 4" scripts/cluster-scaling.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
OUT=${OUT:-target/cluster-scaling}
NODES=${NODES:-"1 2 4"}
PER_NODE=${PER_NODE:-2}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
CONNECTIONS=${CONNECTIONS:-512}
BURST=${BURST:-100000}
COMPARE=${COMPARE:-10000}
LOAD_CORES_MIN=${LOAD_CORES_MIN:-2}
# The allowed cores, one per element ("0-3,8" -> 0 1 2 3 8); index i is the i-th core pin-cores.sh counts.
allowed=()
export PIN_CORES_LIST
PIN_CORES_LIST=$(awk '/^Cpus_allowed_list/ {print $2}' /proc/self/status)
IFS=, read -ra ranges <<< "$PIN_CORES_LIST"
for range in "${ranges[@]}"; do
  allowed+=($(seq "${range%-*}" "${range#*-}"))
done
cores=${#allowed[@]}
command -v taskset > /dev/null || { echo "taskset (util-linux) is needed" >&2; exit 1; }
mkdir -p "$OUT"
export BOXOFFICE_BIN="$BIN/boxoffice" PIN_CORES_PER_NODE="$PER_NODE"
summary="$OUT/summary.txt"
echo "cores: $cores (${allowed[*]}); nodes of $PER_NODE cores; open files $(ulimit -Hn); $(date -u +%FT%TZ)" > "$summary"

for n in $NODES; do
  used=$((n * PER_NODE))
  if [ $((used + LOAD_CORES_MIN)) -gt "$cores" ]; then
    echo "skipping $n nodes: $used cores for nodes leave too few for the load" | tee -a "$summary"
    continue
  fi
  load_cores=$(IFS=,; echo "${allowed[*]:used}")
  echo "== $n node(s) on cores ${allowed[*]:0:used}, load on $load_cores" | tee -a "$summary"
  FRONT_CORES="$load_cores" timeout 150 taskset -c "$load_cores" "$BIN/boxoffice-load" throughput \
    --spawn scripts/pin-cores.sh --spawn-cluster "$n" --runs durable,cluster \
    --connections "$CONNECTIONS" --seconds "$SECONDS_PER_RUN" --out "$OUT/throughput-$n" \
    > "$OUT/throughput-$n.log" 2>&1 || echo "throughput with $n nodes failed (see its log)" | tee -a "$summary"
  grep -E "orders/s|ratio|cluster" "$OUT/throughput-$n.log" | tail -6 >> "$summary" || true
done

echo "== burst of $COMPARE at once against a 1.4 s provider: one node, then 3 nodes behind 2 fronts, every core shared" \
  | tee -a "$summary"
timeout 180 "$BIN/boxoffice-load" burst --spawn "$BIN/boxoffice" --users "$COMPARE" --concurrency "$COMPARE" \
  --payment-latency-ms 1400 --out "$OUT/burst-$COMPARE-node" > "$OUT/burst-$COMPARE-node.log" 2>&1 \
  || echo "the one-node burst exited non-zero (see its log)" | tee -a "$summary"
grep -E "orders \(" "$OUT/burst-$COMPARE-node.log" >> "$summary" || true
timeout 180 "$BIN/boxoffice-load" burst --spawn "$BIN/boxoffice" --spawn-cluster 3 --fronts 2 --users "$COMPARE" \
  --client-processes 2 --payment-latency-ms 1400 --out "$OUT/burst-$COMPARE-cluster" \
  > "$OUT/burst-$COMPARE-cluster.log" 2>&1 || echo "the cluster burst exited non-zero (see its log)" | tee -a "$summary"
grep -E "orders \(" "$OUT/burst-$COMPARE-cluster.log" >> "$summary" || true

echo "== burst of $BURST at once: 3 nodes, 6 fronts, 7 client processes, every core shared" | tee -a "$summary"
timeout 300 "$BIN/boxoffice-load" burst --spawn "$BIN/boxoffice" --spawn-cluster 3 --fronts 6 --users "$BURST" \
  --client-processes 7 --payment-latency-ms 1400 --out "$OUT/burst-$BURST" > "$OUT/burst-$BURST.log" 2>&1 \
  || echo "the burst exited non-zero (see its log)" | tee -a "$summary"
tail -25 "$OUT/burst-$BURST.log" >> "$summary" || true
cat "$summary"
