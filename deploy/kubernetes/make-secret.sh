#!/usr/bin/env bash
# Creates the Secret boxoffice-secrets in namespace boxoffice with fresh random values:
#   BOXOFFICE_CLUSTER_SECRET  64 hex characters; authenticates every call between nodes
#   BOXOFFICE_ADMIN_TOKEN     48 hex characters; the admin's bearer token
#   BOXOFFICE_MASTER_KEY      base64 of 32 random bytes; wraps every user's data key (card data)
# A value already set in this script's environment is used instead of a new one (to recreate the Secret of a
# cluster whose data was written under a master key you kept: a new master key cannot read that data).
# BOXOFFICE_MASTER_KEY_PREVIOUS, when set in the environment, is added too (rotating the master key). To replace
# an existing Secret: deploy/kubernetes/make-secret.sh --print | kubectl apply -f -
#
# Usage: deploy/kubernetes/make-secret.sh            create the Secret with kubectl (the current context)
#        deploy/kubernetes/make-secret.sh --print    print the Secret as YAML on stdout instead (values included)
#
# The values are never printed, except in the Secret's YAML with --print. They reach kubectl through a file only
# this user can read (not the command line, which other users of the machine could see), removed on exit.
# kubectl create refuses to replace an existing Secret: delete it first only if you mean to (see
# docs/operations.md, "Secrets and the master key").
set -euo pipefail

namespace=boxoffice
name=boxoffice-secrets
print=false
case "${1:-}" in
  "") ;;
  --print) print=true ;;
  -h | --help)
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
  *)
    echo "unknown argument: $1 (try --help)" >&2
    exit 2
    ;;
esac
[ $# -le 1 ] || { echo "one argument at most (try --help)" >&2; exit 2; }
command -v kubectl > /dev/null || { echo "kubectl is not installed" >&2; exit 2; }

# n random bytes, as hex or as base64 (one line each).
random_hex() {
  if command -v openssl > /dev/null; then
    openssl rand -hex "$1"
  else
    head -c "$1" /dev/urandom | od -An -v -tx1 | tr -d ' \n'
    echo
  fi
}
random_base64() {
  if command -v openssl > /dev/null; then
    openssl rand -base64 "$1"
  else
    head -c "$1" /dev/urandom | base64 -w0
    echo
  fi
}

cluster_secret=${BOXOFFICE_CLUSTER_SECRET:-$(random_hex 32)}
admin_token=${BOXOFFICE_ADMIN_TOKEN:-$(random_hex 24)}
master_key=${BOXOFFICE_MASTER_KEY:-$(random_base64 32)}

# Checks without showing a value.
[ ${#cluster_secret} -ge 32 ] || { echo "BOXOFFICE_CLUSTER_SECRET: at least 32 characters" >&2; exit 2; }
[ ${#admin_token} -ge 16 ] || { echo "BOXOFFICE_ADMIN_TOKEN: at least 16 characters" >&2; exit 2; }
key_bytes=$(printf '%s' "$master_key" | base64 -d 2> /dev/null | wc -c) || key_bytes=0
[ "$key_bytes" -eq 32 ] || { echo "BOXOFFICE_MASTER_KEY: must be base64 of 32 bytes" >&2; exit 2; }
previous_key=${BOXOFFICE_MASTER_KEY_PREVIOUS:-}
if [ -n "$previous_key" ]; then
  key_bytes=$(printf '%s' "$previous_key" | base64 -d 2> /dev/null | wc -c) || key_bytes=0
  [ "$key_bytes" -eq 32 ] || { echo "BOXOFFICE_MASTER_KEY_PREVIOUS: must be base64 of 32 bytes" >&2; exit 2; }
  [ "$previous_key" != "$master_key" ] || { echo "BOXOFFICE_MASTER_KEY_PREVIOUS equals BOXOFFICE_MASTER_KEY" >&2; exit 2; }
fi
for value in "$cluster_secret" "$admin_token" "$master_key" "$previous_key"; do
  case "$value" in
    *[[:space:]]*) echo "a value holds whitespace" >&2; exit 2 ;;
  esac
done

umask 077
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
{
  printf 'BOXOFFICE_CLUSTER_SECRET=%s\n' "$cluster_secret"
  printf 'BOXOFFICE_ADMIN_TOKEN=%s\n' "$admin_token"
  printf 'BOXOFFICE_MASTER_KEY=%s\n' "$master_key"
  if [ -n "$previous_key" ]; then printf 'BOXOFFICE_MASTER_KEY_PREVIOUS=%s\n' "$previous_key"; fi
} > "$work/secrets.env"

if $print; then
  kubectl -n "$namespace" create secret generic "$name" --from-env-file="$work/secrets.env" \
    --dry-run=client -o yaml
else
  kubectl -n "$namespace" create secret generic "$name" --from-env-file="$work/secrets.env"
  echo "Secret $namespace/$name created. Read the admin token with:" >&2
  echo "  kubectl -n $namespace get secret $name -o jsonpath='{.data.BOXOFFICE_ADMIN_TOKEN}' | base64 -d" >&2
  echo "Keep a copy of BOXOFFICE_MASTER_KEY apart from the volume backups: without it card data is lost." >&2
fi
