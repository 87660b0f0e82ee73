#!/usr/bin/env bash
# Builds ovl's Debian packages from built binaries, with dpkg-deb (no other tool needed):
#
#   ovl             the CLI, its bash/zsh/fish completions and man page
#   ovl-controller  the controller, its systemd unit, /etc/ovl/controller.env, man page
#   ovl-agent       the agent, the Docker driver, the CNI plugin, their units,
#                   /etc/ovl/agent.toml, man page
#
#   scripts/build-debs.sh OUT_DIR [BIN_DIR]    (BIN_DIR: default target/release)
#
# The units and sample configuration are deploy/'s, with the binaries in /usr/bin instead of
# /usr/local/bin. Completions and man pages come from the binaries themselves (`ovl completion
# SHELL`, `ovl man`, `ovl-controller man`, `ovl-agent man`). Maintainer scripts create the
# ovl user and the state directories, reload systemd, and never start a service: each needs
# its PKI or credentials first (docs/operations.md, "Packages").
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

out="${1:?usage: scripts/build-debs.sh OUT_DIR [BIN_DIR]}"
bin_dir="${2:-$repo/target/release}"
for b in ovl ovl-controller ovl-agent ovl-docker ovl-cni; do
    [[ -x "$bin_dir/$b" ]] || {
        echo "build-debs: $bin_dir/$b is missing; run cargo build --release --workspace --bins" >&2
        exit 1
    }
done
for tool in dpkg-deb strip; do
    command -v "$tool" >/dev/null || {
        echo "build-debs: $tool is missing (apt-get install dpkg binutils)" >&2
        exit 1
    }
done

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
arch=$(dpkg --print-architecture)
mkdir -p "$out"
stage=$(mktemp -d -t ovl-debs.XXXXXX)
trap 'rm -rf "$stage"' EXIT

# control NAME DESCRIPTION DEPENDS: the package's DEBIAN/control.
control() {
    local name=$1 description=$2 depends=$3
    mkdir -p "$stage/$name/DEBIAN"
    cat >"$stage/$name/DEBIAN/control" <<EOF
Package: $name
Version: $version
Architecture: $arch
Maintainer: ovl developers <ovl@localhost>
Section: net
Priority: optional
Depends: $depends
Description: $description
EOF
}

# put SRC DEST MODE: copies a file into the staged package tree; binaries without their
# debug information, as Debian ships them.
put() {
    install -D -m "$3" "$1" "$stage/$2"
    if [[ "$3" == 0755 ]]; then
        strip --strip-debug "$stage/$2"
    fi
}

# unit NAME PACKAGE: one of deploy/systemd's units, pointing at /usr/bin.
unit() {
    mkdir -p "$stage/$2/lib/systemd/system"
    sed 's#/usr/local/bin/#/usr/bin/#g' "deploy/systemd/$1" >"$stage/$2/lib/systemd/system/$1"
    chmod 0644 "$stage/$2/lib/systemd/system/$1"
}

# man BINARY SECTION PACKAGE: the binary's man page, compressed as Debian keeps them.
man_page() {
    local dir="$stage/$3/usr/share/man/man$2"
    mkdir -p "$dir"
    "$bin_dir/$1" man | gzip -9n >"$dir/$1.$2.gz"
    chmod 0644 "$dir/$1.$2.gz"
}

# script PACKAGE NAME BODY: a maintainer script.
script() {
    printf '#!/bin/sh\nset -e\n%s\n' "$3" >"$stage/$1/DEBIAN/$2"
    chmod 0755 "$stage/$1/DEBIAN/$2"
}

reload='if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi'

# --- ovl: the CLI
control ovl "ovl command-line interface: tenants, hosts, endpoints, topology
 Drives an ovl cluster's controller over QUIC with mutual TLS: isolated L2 overlays
 (VXLAN, GRE, VLAN) for containers across Linux hosts." 'libc6'
put "$bin_dir/ovl" ovl/usr/bin/ovl 0755
mkdir -p "$stage/ovl/usr/share/bash-completion/completions" \
    "$stage/ovl/usr/share/zsh/vendor-completions" \
    "$stage/ovl/usr/share/fish/vendor_completions.d"
"$bin_dir/ovl" completion bash >"$stage/ovl/usr/share/bash-completion/completions/ovl"
"$bin_dir/ovl" completion zsh >"$stage/ovl/usr/share/zsh/vendor-completions/_ovl"
"$bin_dir/ovl" completion fish >"$stage/ovl/usr/share/fish/vendor_completions.d/ovl.fish"
man_page ovl 1 ovl

# --- ovl-controller
control ovl-controller "ovl controller: tenants, allocations and each host's intent
 Assigns each tenant a VLAN tag, a VXLAN VNI or GRE key and an IP range, keeps them in an
 embedded redb file or in etcd, and pushes each host's intent to its agent." 'libc6, adduser'
put "$bin_dir/ovl-controller" ovl-controller/usr/bin/ovl-controller 0755
unit ovl-controller.service ovl-controller
put deploy/config/controller.env ovl-controller/etc/ovl/controller.env 0644
echo /etc/ovl/controller.env >"$stage/ovl-controller/DEBIAN/conffiles"
man_page ovl-controller 8 ovl-controller
script ovl-controller postinst "if [ \"\$1\" = configure ]; then
    if ! getent passwd ovl >/dev/null; then
        adduser --system --group --home /var/lib/ovl --no-create-home --quiet ovl
    fi
    install -d -m 0750 -o ovl -g ovl /var/lib/ovl
    install -d -m 0700 -o ovl -g ovl /var/lib/ovl/join-tokens
fi
$reload"
script ovl-controller prerm "if [ -d /run/systemd/system ]; then systemctl stop ovl-controller.service || true; fi"
# The database, join tokens and PKI are the cluster's: kept even on purge, and said so.
script ovl-controller postrm "$reload
if [ \"\$1\" = purge ]; then
    rmdir /var/lib/ovl/join-tokens /var/lib/ovl 2>/dev/null || true
    if [ -e /var/lib/ovl ] || [ -e /etc/ovl/pki ]; then
        echo 'ovl-controller: kept /var/lib/ovl and /etc/ovl/pki (the cluster database and PKI); remove them by hand'
    fi
fi"

# --- ovl-agent (with the Docker driver and the CNI plugin)
control ovl-agent "ovl agent: builds a host's Open vSwitch overlay from its intent
 Keeps br-int, br-tun, VXLAN/GRE tunnels, VLAN-tagged veths into container namespaces and NAT
 in line with what the ovl controller wants. Includes the Docker network driver (ovl-docker)
 and the CNI plugin (type \"ovl\")." 'libc6, openvswitch-switch, iproute2, nftables'
put "$bin_dir/ovl-agent" ovl-agent/usr/bin/ovl-agent 0755
put "$bin_dir/ovl-docker" ovl-agent/usr/bin/ovl-docker 0755
put "$bin_dir/ovl-cni" ovl-agent/usr/lib/cni/ovl-cni 0755
ln -s ovl-cni "$stage/ovl-agent/usr/lib/cni/ovl"
unit ovl-agent.service ovl-agent
unit ovl-docker.service ovl-agent
put deploy/config/agent.toml ovl-agent/etc/ovl/agent.toml 0644
echo /etc/ovl/agent.toml >"$stage/ovl-agent/DEBIAN/conffiles"
man_page ovl-agent 8 ovl-agent
script ovl-agent postinst "if [ \"\$1\" = configure ]; then
    install -d -m 0700 /var/lib/ovl-agent /var/lib/ovl-docker
fi
$reload"
script ovl-agent prerm "if [ -d /run/systemd/system ]; then systemctl stop ovl-docker.service ovl-agent.service || true; fi"
script ovl-agent postrm "$reload
if [ \"\$1\" = purge ]; then
    rm -rf /var/lib/ovl-agent /var/lib/ovl-docker
    if [ -e /etc/ovl/host ]; then
        echo 'ovl-agent: kept /etc/ovl/host (this host'\"'\"'s credentials); remove it by hand'
    fi
fi"

for p in ovl ovl-controller ovl-agent; do
    # Root owns everything in the packages whoever builds them; gzip rather than xz, which
    # takes a minute on two cores for little gain.
    dpkg-deb --root-owner-group -Zgzip --build "$stage/$p" "$out/${p}_${version}_${arch}.deb" >/dev/null
    echo "$out/${p}_${version}_${arch}.deb"
done
