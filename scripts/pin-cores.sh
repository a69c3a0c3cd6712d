#!/usr/bin/env bash
# Starts `boxoffice` pinned to cores of its own, for `boxoffice-load --spawn scripts/pin-cores.sh`: shard node K
# (`--node-id K`) gets cores K*C .. K*C+C-1, a front gets the FRONT_CORES, a single node the first C cores.
# C is $PIN_CORES_PER_NODE (default 2); the binary is $BOXOFFICE_BIN (default target/release/boxoffice).
# Used by scripts/cluster-scaling.sh to measure how a cluster scales with nodes on a machine with many cores.
set -euo pipefail
per_node=${PIN_CORES_PER_NODE:-2}
binary=${BOXOFFICE_BIN:-target/release/boxoffice}
node=""
front=0
previous=""
for arg in "$@"; do
  case "$previous" in
    --node-id) node=$arg ;;
  esac
  case "$arg" in
    --node-id=*) node=${arg#--node-id=} ;;
    --role=front) front=1 ;;
    front) [ "$previous" = "--role" ] && front=1 ;;
  esac
  previous=$arg
done
if [ "$front" = 1 ]; then
  cores=${FRONT_CORES:?set FRONT_CORES for fronts}
elif [ -n "$node" ]; then
  first=$((node * per_node))
  cores="$first-$((first + per_node - 1))"
else
  cores="0-$((per_node - 1))"
fi
exec taskset -c "$cores" "$binary" "$@"
