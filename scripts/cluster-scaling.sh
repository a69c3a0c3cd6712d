#!/usr/bin/env bash
# How a cluster scales with nodes, on a machine with enough cores for each node to have its own: for N in $NODES,
# one run of `boxoffice-load throughput --runs durable,cluster` with one durable node on $PER_NODE cores against an
# N-node cluster whose node K runs on cores K*PER_NODE.. (scripts/pin-cores.sh), the load on the cores above them.
# Then a burst of $BURST simultaneous orders against a 1.4 s provider through 6 fronts and 7 client processes, on
# every core. Reports go to $OUT/<run>/; a summary to $OUT/summary.txt.
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
cores=$(nproc)
mkdir -p "$OUT"
export BOXOFFICE_BIN="$BIN/boxoffice" PIN_CORES_PER_NODE="$PER_NODE"
summary="$OUT/summary.txt"
echo "cores: $cores; nodes of $PER_NODE cores; $(date -u +%FT%TZ)" > "$summary"

for n in $NODES; do
  used=$((n * PER_NODE))
  if [ $((used + 2)) -gt "$cores" ]; then
    echo "skipping $n nodes: $used cores for nodes leave too few for the load" | tee -a "$summary"
    continue
  fi
  load_cores="$used-$((cores - 1))"
  echo "== $n node(s) on cores 0-$((used - 1)), load on $load_cores" | tee -a "$summary"
  FRONT_CORES="$load_cores" taskset -c "$load_cores" "$BIN/boxoffice-load" throughput \
    --spawn scripts/pin-cores.sh --spawn-cluster "$n" --runs durable,cluster \
    --connections "$CONNECTIONS" --seconds "$SECONDS_PER_RUN" --out "$OUT/throughput-$n" \
    > "$OUT/throughput-$n.log" 2>&1 || echo "throughput with $n nodes failed (see its log)" | tee -a "$summary"
  grep -E "orders/s|ratio|cluster" "$OUT/throughput-$n.log" | tail -6 >> "$summary" || true
done

echo "== burst of $BURST at once: 3 nodes, 6 fronts, 7 client processes, every core shared" | tee -a "$summary"
"$BIN/boxoffice-load" burst --spawn "$BIN/boxoffice" --spawn-cluster 3 --fronts 6 --users "$BURST" \
  --client-processes 7 --payment-latency-ms 1400 --out "$OUT/burst-$BURST" > "$OUT/burst-$BURST.log" 2>&1 \
  || echo "the burst exited non-zero (see its log)" | tee -a "$summary"
tail -25 "$OUT/burst-$BURST.log" >> "$summary" || true
cat "$summary"
