#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests, the deployment checks (units, scripts,
# Vagrantfile), the privileged tests that run real Open vSwitch, namespaces, QUIC and redb, and
# the VM lab test (real VMs with systemd and the kernel datapath; OVL_VM_TESTS=1).
# Needs root (namespaces, OVS) and a Debian machine.
set -euo pipefail
cd "$(dirname "$0")/.."

OVL_DEV_PACKAGES=1 OVL_VM_PACKAGES=1 bash deploy/install-deps.sh

if ! command -v cargo-nextest >/dev/null 2>&1; then
    cargo install --locked cargo-nextest
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo deny (advisories, licenses, duplicate versions, sources)"
bash scripts/deny.sh
echo "== build"
cargo build --workspace --all-targets --locked
echo "== deployment checks (shellcheck, systemd-analyze verify, vagrant validate)"
bash scripts/check-deploy.sh target/debug
echo "== tests (privileged tests included: --run-ignored all)"
cargo nextest run --workspace --locked --run-ignored all --no-fail-fast -E 'not binary(vm_lab)'
# The control-plane tests once more with the store in etcd (each test starts a three-member
# etcd cluster of its own) instead of a redb file.
echo "== control-plane tests against the etcd store (OVL_TEST_STORE=etcd)"
OVL_TEST_STORE=etcd cargo nextest run -p ovl-tests --locked --run-ignored all --no-fail-fast \
    --test control_plane --test intent_deltas --test host_api --test join \
    --test reliability_auth --test reliability_fields --test host_lifecycle
# Real VMs last, on their own: emulated CPUs take the machine's cores, which would slow the
# timing-sensitive tests above. The first run on a machine also builds the VM image
# (vagrant/build-box.sh, cached afterwards).
echo "== VM tests (ovl lab up --vm: real Debian VMs, systemd units, the kernel datapath)"
OVL_VM_TESTS=1 cargo nextest run -p ovl-tests --test vm_lab --locked --run-ignored all --no-fail-fast
