#!/usr/bin/env bash
# Runs presence-loadgen against a fresh release broker on this machine:
# a JetStream nats-server and presenced (clustered mode, one node) in a
# temporary directory, with limits raised for load (streams per principal,
# device rate). Extra arguments go to presence-loadgen, e.g.
#
#   scripts/load.sh --users 1000 --streams 1000 --targets 50 --rate 0 --json load.json
#
# PRESENCE_WRAP runs presenced under a wrapper, e.g.
# PRESENCE_WRAP="heaptrack -o /tmp/presenced" for a heap profile.
# The per-domain ingest quota is off unless PRESENCE_DOMAIN_EVENTS_PER_SECOND
# (and PRESENCE_DOMAIN_EVENTS_BURST) are set, e.g. for --mode fairness.
#
# Needs nats-server (scripts/test.sh installs it). Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p presence-presenced -p presence-loadgen
work=$(mktemp -d)
cleanup() {
    # A PRESENCE_WRAP wrapper (heaptrack) runs presenced as its child.
    pkill -TERM -P "${presenced_pid:-0}" 2>/dev/null || true
    kill "${presenced_pid:-}" "${nats_pid:-}" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
nats_port=$((20000 + RANDOM % 20000))
nats-server -a 127.0.0.1 -p "$nats_port" -js -sd "$work/js" >"$work/nats.log" 2>&1 &
nats_pid=$!
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null && break
    sleep 0.05
done
PRESENCE_MAX_STREAMS_PER_PRINCIPAL=1000000 \
PRESENCE_WATCH_MAX_TARGETS=100000 \
PRESENCE_DEVICE_RATE_PER_SECOND=1000000 \
PRESENCE_DEVICE_RATE_BURST=1000000 \
PRESENCE_DOMAIN_EVENTS_PER_SECOND="${PRESENCE_DOMAIN_EVENTS_PER_SECOND:-0}" \
PRESENCE_DOMAIN_EVENTS_BURST="${PRESENCE_DOMAIN_EVENTS_BURST:-40000}" \
PRESENCE_MAX_STREAMS_PER_DOMAIN=1000000 \
PRESENCE_SHARDS="${PRESENCE_SHARDS:-64}" \
RUST_LOG="${RUST_LOG:-warn}" \
    ${PRESENCE_WRAP:-} target/release/presenced --data-dir "$work/data" --listen 127.0.0.1:0 \
    --metrics-listen "127.0.0.1:$((nats_port + 1))" --nats-url "nats://127.0.0.1:$nats_port" \
    --ready-file "$work/ready" >"$work/presenced.log" 2>&1 &
presenced_pid=$!
for _ in $(seq 200); do
    [ -s "$work/ready" ] && break
    sleep 0.05
done
[ -s "$work/ready" ] || { echo "presenced did not start"; cat "$work/presenced.log"; exit 1; }
target/release/presence-loadgen --grpc "http://$(cat "$work/ready")" \
    --nats "nats://127.0.0.1:$nats_port" --token-file "$work/data/bootstrap-admin.token" \
    --server-pid "$presenced_pid" --metrics-url "http://127.0.0.1:$((nats_port + 1))/metrics" "$@"
