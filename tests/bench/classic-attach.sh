#!/usr/bin/env bash
# The "classic way" baseline of ovl-bench: attaches containers (network namespaces) to a host's
# Open vSwitch integration bridge by hand, one command at a time, the way an operator's shell
# loop would. ovl-bench times this script against ovl doing the same attachments.
#
# Usage: classic-attach.sh PLAN
#
# PLAN holds one step per line, fields separated by spaces:
#
#   tunnel DB BRIDGE PORT TYPE REMOTE_IP KEY TAG
#       a VXLAN or GRE port to one peer host, in the segment's VLAN, with split horizon
#       (`protected`) so a full mesh of tunnels does not loop broadcasts;
#   port HOST_NS DB BRIDGE CONTAINER_NS HOST_IF PEER_IF TAG ADDR/PREFIX MTU
#       one container: a veth pair, one end moved into the container, the other end an access
#       port of BRIDGE in VLAN TAG, an address on the container end, both ends up.
#
# DB is the host's OVSDB remote (`unix:/path/db.sock`); HOST_NS the network namespace the
# host's ovs-vswitchd runs in. The script stops at the first failing command.

set -euo pipefail

plan=${1:?usage: classic-attach.sh PLAN}

while read -r kind a b c d e f g h i; do
    case "$kind" in
    tunnel)
        db=$a bridge=$b port=$c type=$d remote=$e key=$f tag=$g
        ovs-vsctl --db="$db" --timeout=10 add-port "$bridge" "$port" tag="$tag" protected=true \
            -- set interface "$port" type="$type" options:remote_ip="$remote" options:key="$key"
        ;;
    port)
        host_ns=$a db=$b bridge=$c ct=$d host_if=$e peer_if=$f tag=$g addr=$h mtu=$i
        ip -n "$host_ns" link add "$host_if" mtu "$mtu" type veth peer name "$peer_if" mtu "$mtu"
        ip -n "$host_ns" link set "$peer_if" netns "$ct"
        ip -n "$host_ns" link set "$host_if" up
        ovs-vsctl --db="$db" --timeout=10 add-port "$bridge" "$host_if" tag="$tag"
        ip -n "$ct" addr add "$addr" dev "$peer_if"
        ip -n "$ct" link set "$peer_if" up
        ;;
    "" | "#"*) ;;
    *)
        echo "classic-attach.sh: unknown step '$kind' in $plan" >&2
        exit 2
        ;;
    esac
done <"$plan"
