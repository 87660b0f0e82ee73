#!/usr/bin/env bash
# Installs what is missing, builds ovl, brings up a three-host lab on this machine and runs the
# demo: two tenants with the same subnet across three hosts, pings that prove connectivity
# within a tenant and isolation between them. Run as root on Debian 12 (bookworm).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $(id -u) -ne 0 ]]; then
    echo "demo: run this as root (the lab creates network namespaces and runs Open vSwitch)" >&2
    exit 1
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "demo: needs a Rust toolchain (cargo, Rust 1.85 or newer) on PATH" >&2
    exit 1
fi

bash deploy/install-deps.sh
echo "== building ovl (release)"
cargo build --release --locked --bins
echo "== bringing up the lab"
./target/release/ovl lab up --hosts 3
echo "== running the demo"
./target/release/ovl lab demo
cat <<'MSG'

The lab stays up. Next:
  ./target/release/ovl status
  ./target/release/ovl tenant list
  ./target/release/ovl trace blue-1 blue-2 --ovs   # a packet's path, hop by hop
  ./target/release/ovl lab status
  ./target/release/ovl lab down      # removes every namespace, process, link and file
MSG
