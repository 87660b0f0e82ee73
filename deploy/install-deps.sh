#!/usr/bin/env bash
# Installs the Debian packages ovl needs on a host, a lab machine or CI. Idempotent: it only
# calls apt when something is missing. Run as root.
set -euo pipefail

packages=(openvswitch-switch iproute2 nftables iputils-ping ethtool iperf3 tcpdump procps psmisc)
if [[ "${OVL_DEV_PACKAGES:-0}" == 1 ]]; then
    # Used by the test suite's deployment checks, by its Docker tests (a real dockerd per lab
    # host; busybox-static is the root filesystem of their image, as nothing is pulled) and by
    # its CNI tests (podman with its CNI backend per lab host).
    packages+=(shellcheck systemd vagrant docker.io busybox-static)
    packages+=(podman containernetworking-plugins)
    # The etcd client and store tests run real etcd members (etcdctl reads their snapshots).
    packages+=(etcd-server etcd-client)
    # `ovl topology -o svg` draws with Graphviz's dot (tested).
    packages+=(graphviz)
fi

if [[ "${OVL_VM_PACKAGES:-0}" == 1 ]]; then
    # The VM lab (`ovl lab up --vm`, vagrant/build-box.sh) and its test.
    packages+=(debootstrap qemu-system-x86 openssh-client)
fi

if [[ "${OVL_VAGRANT_PACKAGES:-0}" == 1 ]]; then
    # The Vagrant lab on this machine with libvirt (vagrant/libvirt-lab.sh): vagrant-libvirt,
    # a libvirtd and dnsmasq for Vagrant's own management network.
    packages+=(vagrant vagrant-libvirt libvirt-daemon-system libvirt-clients dnsmasq-base
        qemu-system-x86 rsync openssh-client)
fi

missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done

if ((${#missing[@]} > 0)); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "install-deps: missing packages: ${missing[*]}; run this script as root" >&2
        exit 1
    fi
    echo "install-deps: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    extra=()
    if [[ " ${missing[*]} " == *" qemu-system-x86 "* ]]; then
        # A machine may carry a newer qemu-utils (from backports) that Breaks the release's
        # qemu-system; install the release's matching qemu-utils beside it.
        version=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
        extra=(--allow-downgrades "qemu-utils=$version")
    fi
    apt-get install -y -qq --no-install-recommends "${extra[@]}" "${missing[@]}" >/dev/null
fi

# Open vSwitch's tools expect this directory even when every instance has its own run dir.
mkdir -p /var/run/openvswitch /run/netns
echo "install-deps: all packages present" >&2
