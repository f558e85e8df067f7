#!/usr/bin/env bash
# Runs a three-node highly available deployment on this machine from the
# shipped configs (deploy/nats/cluster-N.conf, deploy/presenced-ha.toml,
# with loopback ports and temporary paths) and measures, with
# presence-loadgen --mode revocation, how long a grant removed through
# node 1 takes to revoke a watch stream open on node 3. Extra arguments go
# to presence-loadgen, e.g.
#
#   scripts/ha.sh --users 200 --rounds 500 --json revocation.json
#
# REPLICAS=1 scripts/ha.sh runs the same with single-replica streams
# (the write-latency comparison of docs/deployment.md).
#
# Needs nats-server (scripts/test.sh installs it). Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p presence-presenced -p presence-loadgen
work=$(mktemp -d)
pids=()
cleanup() {
    kill "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
base=$((20000 + RANDOM % 20000))
client() { echo $((base + $1)); }
route() { echo $((base + 10 + $1)); }
for i in 1 2 3; do
    sed -e "s/0\.0\.0\.0:4222/127.0.0.1:$(client "$i")/" \
        -e "s/0\.0\.0\.0:6222/127.0.0.1:$(route "$i")/" \
        -e "s/@nats-1:6222/@127.0.0.1:$(route 1)/" \
        -e "s/@nats-2:6222/@127.0.0.1:$(route 2)/" \
        -e "s/@nats-3:6222/@127.0.0.1:$(route 3)/" \
        -e "s#store_dir: .*#store_dir: \"$work/js$i\"#" \
        -e "s/^http: .*/http: 127.0.0.1:$((base + 20 + i))/" \
        "deploy/nats/cluster-$i.conf" >"$work/nats-$i.conf"
    nats-server -c "$work/nats-$i.conf" >"$work/nats-$i.log" 2>&1 &
    pids+=($!)
done
# Ready once each server's JetStream is healthy (the cluster elected its
# meta leader).
for i in 1 2 3; do
    for _ in $(seq 600); do
        curl -fs "http://127.0.0.1:$((base + 20 + i))/healthz" >/dev/null 2>&1 && break
        sleep 0.1
    done
done
urls=""
for i in 1 2 3; do
    urls="$urls${urls:+,}nats://presenced:change-me@127.0.0.1:$(client "$i")"
done
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$work/auth.key"
for i in 1 2 3; do
    PRESENCE_CONFIG=deploy/presenced-ha.toml \
    PRESENCE_AUTH_KEY_FILE="$work/auth.key" \
    PRESENCE_TLS_CERT_FILE="" PRESENCE_TLS_KEY_FILE="" \
    PRESENCE_JETSTREAM_REPLICAS="${REPLICAS:-3}" \
    PRESENCE_NODE_ID="node-$i" \
    PRESENCE_LOG_FORMAT=text \
    RUST_LOG="${RUST_LOG:-warn}" \
        target/release/presenced --data-dir "$work/node-$i" --listen 127.0.0.1:0 \
        --metrics-listen "" --nats-url "$urls" --ready-file "$work/ready-$i" \
        >"$work/presenced-$i.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 600); do
        [ -s "$work/ready-$i" ] && break
        sleep 0.05
    done
    [ -s "$work/ready-$i" ] || { echo "node $i did not start"; cat "$work/presenced-$i.log"; exit 1; }
done
target/release/presence-loadgen --mode revocation \
    --write-grpc "http://$(cat "$work/ready-1")" --grpc "http://$(cat "$work/ready-3")" \
    --token-file "$work/node-1/bootstrap-admin.token" "$@"
