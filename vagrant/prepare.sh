#!/usr/bin/env bash
# Runs on the workstation (a Vagrant trigger, before machines come up) and stages in
# vagrant/.lab what the lab VMs receive through rsync folders:
#
#   .lab/bin/                      ovl, ovl-controller, ovl-agent, ovl-cni from target/release
#                                  (or $OVL_BIN_DIR); every VM installs these
#   .lab/controller/pki/           the lab PKI (CA key included), created once
#   .lab/controller/join-tokens/   token records (hashes only) for the controller
#   .lab/hosts/hostN/token         hostN's one-time join token, bound to its name
#   .lab/hosts/hostN/ca-hash       the CA hash hostN pins when it joins
#   .lab/demo/admin/               an admin bundle for the host that drives the demo
#
# The PKI and the tokens are made here, with the same `ovl-controller` the VMs run, because
# rsync folders only carry files from the workstation into the VMs: a token created inside the
# controller VM could not reach the hosts. Idempotent; `rm -rf vagrant/.lab` starts afresh.
#
# A parallel `vagrant up` runs this trigger once per VM at the same moment: the copies take a
# lock and run one after another, every file appears by an atomic rename (never half-written,
# never a binary replaced while another copy runs it), and a host whose token or CA hash is
# missing or empty is (re)made on the next run rather than skipped.
#
# `ovl lab up --vm` stages its VMs' files the same way, in its own directory ($OVL_LAB_STAGE).
#
#   vagrant/prepare.sh HOSTS
set -euo pipefail
hosts=${1:?usage: prepare.sh NUMBER_OF_HOSTS}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
lab="${OVL_LAB_STAGE:-$here/.lab}"
bin_src="${OVL_BIN_DIR:-$repo/target/release}"

die() {
    echo "prepare: $*" >&2
    exit 1
}

umask 077
mkdir -p "$lab/bin" "$lab/controller" "$lab/hosts" "$lab/demo"
exec 9>"$lab/.lock"
flock 9

for b in ovl ovl-controller ovl-agent ovl-cni; do
    [[ -x "$bin_src/$b" ]] || die "$bin_src/$b is not built; run 'cargo build --release' (or set OVL_BIN_DIR)"
    # Stripped: the VMs need no debug symbols, and a debug build is ten times the size.
    install -s -m 0755 "$bin_src/$b" "$lab/bin/.$b.new"
    mv -f "$lab/bin/.$b.new" "$lab/bin/$b"
done
ctl="$lab/bin/ovl-controller"

pki="$lab/controller/pki"
if [[ ! -e "$pki/ca.crt" ]]; then
    "$ctl" init --pki "$pki" >/dev/null
    echo "prepare: created the lab PKI in $pki" >&2
fi

for ((i = 1; i <= hosts; i++)); do
    name="host$i"
    dir="$lab/hosts/$name"
    mkdir -p "$dir"
    [[ -s "$dir/token" && -s "$dir/ca-hash" ]] && continue
    # stdout is the token alone; stderr repeats the join command line, CA hash included.
    if ! "$ctl" token create --host "$name" --ttl 24h --tokens "$lab/controller/join-tokens" \
        --pki "$pki" --join-address "${OVL_CONTROLLER_IP:-192.168.56.10}:7301" \
        >"$dir/token.new" 2>"$dir/token.info"; then
        cat "$dir/token.info" >&2
        die "cannot create a join token for $name"
    fi
    grep -o 'sha256:[0-9a-f]\{64\}' "$dir/token.info" | head -n 1 >"$dir/ca-hash.new"
    [[ -s "$dir/ca-hash.new" ]] || die "no CA hash in the output of 'ovl-controller token create'"
    mv "$dir/ca-hash.new" "$dir/ca-hash"
    mv "$dir/token.new" "$dir/token"
    rm -f "$dir/token.info"
    echo "prepare: created a join token for $name (valid 24h)" >&2
done

if [[ ! -e "$lab/demo/admin/tls.crt" ]]; then
    rm -rf "$lab/demo/admin.new"
    "$ctl" issue admin lab-demo --pki "$pki" --out "$lab/demo/admin.new" >/dev/null
    mv "$lab/demo/admin.new" "$lab/demo/admin"
fi
