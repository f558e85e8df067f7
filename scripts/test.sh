#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what the tests
# need (Debian's nats-server), checks formatting and lints, then runs every
# unit, integration and end-to-end test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

need_nats() { ! command -v "${NATS_SERVER_BIN:-nats-server}" >/dev/null 2>&1; }

if need_nats; then
  echo "==> installing nats-server (Debian package)"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nats-server >/dev/null
  # The package enables a system service on the default port; the tests
  # start their own servers on free ports and do not need it.
  if command -v systemctl >/dev/null 2>&1; then
    $SUDO systemctl disable --now nats-server >/dev/null 2>&1 || true
  fi
fi
echo "==> $(${NATS_SERVER_BIN:-nats-server} --version)"

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "==> cargo test"
cargo test --workspace --locked
