#!/usr/bin/env bash
# What durability costs: durable orders per second over HTTP (POST /orders, one ticket each, 0 ms payment
# simulator) at 64 and 256 connections, with --durability fsync and --durability none in the same run.
# Needs wrk and a release build (cargo build --release). Starts and stops its own servers on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
binary=target/release/boxoffice
admin=bench-admin-token-0123456789
seconds=${SECONDS_PER_RUN:-10}
script=$(mktemp)
trap 'rm -f "$script"' EXIT
cat > "$script" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("TOKEN")
wrk.body = '{"concert_id":"' .. os.getenv("CONCERT") .. '","quantity":1}'
LUA
json_field() { python3 -c "import json,sys; print(json.load(sys.stdin)[\"$1\"])"; }

run() {
  local mode=$1 connections=$2 dir log port pid
  dir=$(mktemp -d); log=$(mktemp)
  BOXOFFICE_ADMIN_TOKEN=$admin RUST_LOG=warn "$binary" serve --listen 127.0.0.1:0 --data-dir "$dir" \
    --durability "$mode" > "$log" 2>&1 &
  pid=$!
  until grep -q 'listening on' "$log"; do sleep 0.05; done
  port=$(sed -n 's/.*127.0.0.1:\([0-9]*\).*/\1/p' "$log" | head -1)
  until curl -sf "127.0.0.1:$port/health" > /dev/null; do sleep 0.05; done
  local token concert
  token=$(curl -s -XPOST "127.0.0.1:$port/users" -H 'content-type: application/json' -d '{"username":"loader",
    "password":"password-123456","card":{"type":"visa","holder_name":"L","number":"4242424242424242",
    "exp_month":12,"exp_year":2030,"cvv":"123"}}' | json_field token)
  concert=$(curl -s -XPOST "127.0.0.1:$port/concerts" -H 'content-type: application/json' \
    -H "authorization: Bearer $admin" -d '{"name":"bench","starts_at":"2027-01-01T20:00:00Z",
    "price_cents":100,"capacity":10000000,"shards":8}' | json_field id)
  local rate
  rate=$(TOKEN=$token CONCERT=$concert wrk -t2 -c"$connections" -d"${seconds}s" -s "$script" \
    "http://127.0.0.1:$port/orders" | sed -n 's/Requests\/sec: *//p')
  local sold
  sold=$(curl -s "127.0.0.1:$port/concerts/$concert" | json_field sold)
  kill -TERM "$pid"; wait "$pid" || true
  rm -rf "$dir" "$log"
  printf '%-6s %4s connections: %10s orders/s (%s tickets sold)\n' "$mode" "$connections" "$rate" "$sold"
}

for connections in 64 256; do
  run fsync "$connections"
  run none "$connections"
done
