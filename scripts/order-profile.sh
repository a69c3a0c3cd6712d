#!/usr/bin/env bash
# Where a node's CPU goes while it sells: one `boxoffice-load throughput --runs $RUN` against $SERVER, a system-wide
# `perf record` of $PROFILE_S seconds in the middle of its measured window, then scripts/order-profile.py's
# breakdown of the node's samples by thread and by what they were doing. Needs perf (Debian: linux-perf) and
# permission to profile every process (root, or kernel.perf_event_paranoid <= -1).
#
#   SERVER=target/release/boxoffice RUN=durable OUT=target/order-profile scripts/order-profile.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SERVER=${SERVER:-target/release/boxoffice}
LOAD=${LOAD:-target/release/boxoffice-load}
RUN=${RUN:-durable}
OUT=${OUT:-target/order-profile}
CONNECTIONS=${CONNECTIONS:-256}
PROFILE_S=${PROFILE_S:-6}
command -v perf > /dev/null || { echo "perf is needed (Debian: apt-get install linux-perf)" >&2; exit 1; }
mkdir -p "$OUT"
"$LOAD" throughput --spawn "$SERVER" --runs "$RUN" --connections "$CONNECTIONS" --seconds $((PROFILE_S + 8)) \
  --out "$OUT/throughput" > "$OUT/throughput.log" 2>&1 &
load=$!
# The set-up (10,000 buyers, a concert) and the 2 s warm-up come first.
sleep "${SETUP_S:-9}"
perf record -a -F 499 -g --call-graph dwarf,16384 -o "$OUT/perf.data" -- sleep "$PROFILE_S" 2> "$OUT/perf.log"
wait "$load"
grep -E "orders/s \(" "$OUT/throughput.log" | sed 's/orders sent in all.*latency/latency/'
perf script -i "$OUT/perf.data" -F comm,pid,tid,ip,sym 2> /dev/null | python3 scripts/order-profile.py \
  | tee "$OUT/breakdown.txt"
