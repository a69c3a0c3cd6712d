#!/usr/bin/env bash
# Starts `boxoffice` pinned to cores of its own, for `boxoffice-load --spawn scripts/pin-cores.sh`: shard node K
# (`--node-id K`) gets the allowed cores K*C .. K*C+C-1, a front the cores FRONT_CORES names, a single node the
# first C. Cores are counted in $PIN_CORES_LIST (default: the cores this process may run on, `Cpus_allowed_list`).
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
    --role) [ "$arg" = front ] && front=1 ;;
  esac
  case "$arg" in
    --node-id=*) node=${arg#--node-id=} ;;
    --role=front) front=1 ;;
  esac
  previous=$arg
done
if [ "$front" = 1 ]; then
  exec taskset -c "${FRONT_CORES:?set FRONT_CORES for fronts}" "$binary" "$@"
fi
# The cores to count in, one per element ("0-3,8" -> 0 1 2 3 8): $PIN_CORES_LIST, else those this process may
# run on (a caller pinned to the load's cores must name the whole list, or the nodes land on the load's).
allowed=()
IFS=, read -ra ranges <<< "${PIN_CORES_LIST:-$(awk '/^Cpus_allowed_list/ {print $2}' /proc/self/status)}"
for range in "${ranges[@]}"; do
  allowed+=($(seq "${range%-*}" "${range#*-}"))
done
first=$(( ${node:-0} * per_node ))
if [ $((first + per_node)) -gt ${#allowed[@]} ]; then
  echo "pin-cores: node ${node:-0} needs cores $first..$((first + per_node - 1)) of ${#allowed[@]} allowed" >&2
  exit 1
fi
cores=$(IFS=,; echo "${allowed[*]:first:per_node}")
exec taskset -c "$cores" "$binary" "$@"
