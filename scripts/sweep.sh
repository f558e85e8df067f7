#!/usr/bin/env bash
# The scale curve of docs/benchmarks.md: for each (streams, targets per
# stream) point, a fresh broker (scripts/load.sh) runs the raw-NATS
# baseline and the broker at RATE events/s for DURATION seconds; the
# points are then drawn into one SVG. A fresh server per point keeps the
# memory figure honest (a server reused across points hands freed memory
# to the next one).
#
#   scripts/sweep.sh [out.svg]      # STREAMS, TARGETS, RATE, DURATION, STYLE override
#   STYLE=many scripts/sweep.sh docs/scale-many.svg   # WatchMany gateways
#
# Needs nats-server (scripts/test.sh installs it). Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-docs/scale.svg}
streams=${STREAMS:-100 300 1000 3000 10000}
targets=${TARGETS:-5 20}
rate=${RATE:-1000}
duration=${DURATION:-5}
style=${STYLE:-gateway}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
files=()
for t in $targets; do
    for s in $streams; do
        f="$work/point-$s-$t.json"
        scripts/load.sh --mode sweep --users 1000 --sweep-streams "$s" --sweep-targets "$t" \
            --rate "$rate" --duration "$duration" --style "$style" --json "$f" >"$work/log-$s-$t.txt" 2>&1 ||
            { tail -20 "$work/log-$s-$t.txt"; exit 1; }
        files+=("$f")
    done
done
joined=$(IFS=,; echo "${files[*]}")
target/release/presence-loadgen --token-file /dev/null --rate "$rate" --replot "$joined" \
    --plot "$out" --json "${out%.svg}.json"
