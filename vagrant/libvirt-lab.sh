#!/usr/bin/env bash
# The Vagrant lab for real, with vagrant-libvirt, on a machine where no systemd runs libvirtd
# (a CI machine, a container, a VM without nested virtualisation): this script is what
# docs/vagrant.md's recorded runs were made with.
#
#   vagrant/libvirt-lab.sh run      up (parallel, vagrant's default) → demo checked → up again
#                                   on the running lab → demo again → destroy; prints timings
#   vagrant/libvirt-lab.sh up       only bring the lab up (and start libvirtd if needed)
#   vagrant/libvirt-lab.sh down     destroy the lab, stop the libvirtd this script started
#
# What it sets up first, once:
# - the packages (deploy/install-deps.sh with OVL_VAGRANT_PACKAGES=1) and the box that
#   vagrant/build-box.sh builds offline, added as `ovl-bookworm` (re-added when rebuilt);
# - where systemd does not run libvirtd: `virtlogd` and `libvirtd` started in a network
#   namespace of the lab's own ($OVL_VAGRANT_NETNS, default ovlvg), so the bridges, dnsmasq and
#   firewall rules libvirt makes for the lab's networks stay out of the machine's own
#   namespace; vagrant runs in that namespace too, to reach the VMs;
# - Vagrant's home in $VAGRANT_HOME (default /var/lib/ovl-vagrant), readable by libvirt's QEMU
#   user, which must open the kernel and initrd in the box's directory;
# - a `default` storage pool (vagrant-libvirt needs one) in /var/lib/libvirt/images.
#
# Needs root, a release build (`cargo build --release`) and about 3.5 GiB of memory.
# OVL_HOSTS (default 2) and the Vagrantfile's other variables apply.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
ns=${OVL_VAGRANT_NETNS:-ovlvg}
pool_dir=/var/lib/libvirt/images
state=/run/ovl-vagrant-lab
box_name=ovl-bookworm
export OVL_BOX=${OVL_BOX:-$box_name}
hosts=${OVL_HOSTS:-2}
# Vagrant's boxes where libvirt's QEMU user can read them: the box boots the kernel and initrd
# stored in its directory, and root's home (mode 700) hides them from QEMU.
export VAGRANT_HOME=${VAGRANT_HOME:-/var/lib/ovl-vagrant}

die() {
    echo "libvirt-lab: $*" >&2
    exit 1
}
say() { echo "libvirt-lab: $*" >&2; }

[[ $(id -u) -eq 0 ]] || die "run as root (libvirtd, network namespaces)"
[[ -x $repo/target/release/ovl-agent ]] || die "no release build in $repo/target/release; run cargo build --release first"

# Runs a command where the lab lives: in the lab's namespace when this script started libvirtd
# there, else (a libvirtd run by systemd) in the machine's own.
in_lab() {
    if [[ -e $state/netns ]]; then
        ip netns exec "$ns" "$@"
    else
        "$@"
    fi
}

start_libvirt() {
    mkdir -p "$state"
    if systemctl is-active --quiet libvirtd 2>/dev/null; then
        say "libvirtd runs under systemd; using it"
        return
    fi
    if [[ -e $state/netns ]] && pgrep -x libvirtd >/dev/null; then
        return
    fi
    pgrep -x libvirtd >/dev/null && die "a libvirtd this script did not start is running; stop it or run it under systemd"
    ip netns add "$ns" 2>/dev/null || true
    ip -n "$ns" link set lo up
    touch "$state/netns"
    say "starting virtlogd and libvirtd in network namespace $ns"
    ip netns exec "$ns" virtlogd -d
    ip netns exec "$ns" libvirtd -d
    for _ in $(seq 1 50); do
        virsh -c qemu:///system version >/dev/null 2>&1 && break
        sleep 0.2
    done
    virsh -c qemu:///system version >/dev/null 2>&1 || die "libvirtd did not answer"
}

stop_libvirt() {
    [[ -e $state/netns ]] || return 0
    say "stopping the libvirtd and virtlogd this script started"
    pkill -x libvirtd || true
    pkill -x virtlogd || true
    # dnsmasq for Vagrant's management network runs until its network is destroyed.
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
    sleep 1
    ip netns delete "$ns" 2>/dev/null || true
    rm -f "$state/netns"
}

ensure_pool() {
    if ! virsh -c qemu:///system pool-info default >/dev/null 2>&1; then
        mkdir -p "$pool_dir"
        virsh -c qemu:///system pool-define-as default dir --target "$pool_dir" >/dev/null
    fi
    if ! virsh -c qemu:///system pool-info default | grep -q 'State:.*running'; then
        virsh -c qemu:///system pool-start default >/dev/null
    fi
}

# Adds the box build-box.sh made, again whenever it was rebuilt; the volume vagrant-libvirt
# made from an older box would otherwise be reused.
ensure_box() {
    local dir
    dir=$(bash "$here/build-box.sh" | tail -n1)
    [[ -f $dir/$box_name.box ]] || die "build-box.sh made no box in $dir"
    local marker=$VAGRANT_HOME/boxes/$box_name/.ovl-source
    if [[ $(cat "$marker" 2>/dev/null) != "$dir" ]]; then
        say "adding box $box_name from $dir"
        vagrant box add --force --name "$box_name" "$dir/$box_name.box" >/dev/null
        virsh -c qemu:///system vol-list default 2>/dev/null | awk -v b="$box_name" '$1 ~ "^" b "_vagrant_box" {print $1}' |
            while read -r vol; do virsh -c qemu:///system vol-delete --pool default "$vol" >/dev/null; done
        echo "$dir" >"$marker"
    fi
}

# Runs `vagrant ARGS` in vagrant/ where the lab lives, timing it.
timed_vagrant() {
    local start=$SECONDS
    (cd "$here" && in_lab vagrant "$@")
    say "vagrant $* took $((SECONDS - start)) s"
}

check_demo() {
    local last="host$hosts"
    say "checking the demo: $last pings host1's demo endpoint across the overlay"
    (cd "$here" && in_lab vagrant ssh "$last" -c 'sudo ip netns exec demo ping -c 5 -W 3 10.100.0.2') ||
        die "the demo endpoint on $last cannot reach host1's"
    (cd "$here" && in_lab vagrant ssh host1 -c \
        'sudo ovs-vsctl get Open_vSwitch . datapath_types; sudo ovs-vsctl get bridge br-int datapath_type')
}

up() {
    OVL_VAGRANT_PACKAGES=1 bash "$repo/deploy/install-deps.sh"
    start_libvirt
    ensure_pool
    ensure_box
    timed_vagrant up --provider=libvirt
}

down() {
    if [[ -d $here/.vagrant ]]; then
        timed_vagrant destroy -f
    fi
    local left
    left=$(virsh -c qemu:///system list --all --name 2>/dev/null | grep -E '^vagrant_' || true)
    [[ -z $left ]] || die "domains left after destroy: $left"
    stop_libvirt
}

case "${1:-}" in
run)
    total=$SECONDS
    up
    check_demo
    say "again, on the lab that is up"
    timed_vagrant up --provider=libvirt
    timed_vagrant provision "host$hosts" --provision-with demo
    check_demo
    down
    say "whole run: $((SECONDS - total)) s"
    ;;
up) up ;;
down) down ;;
*) die "usage: libvirt-lab.sh run|up|down" ;;
esac
