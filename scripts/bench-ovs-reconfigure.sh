#!/usr/bin/env bash
# What one OVSDB change costs ovs-vswitchd on a bridge with many ports (issue 12, row 3's
# floor): one ovs-vswitchd with the userspace `netdev` datapath, as in the namespace lab, in
# a namespace of its own, given PORTS veth ports on br-int; then, over five rounds, one port
# added, one retagged, one relabelled and one deleted, each `ovs-vsctl` waiting until
# ovs-vswitchd has applied it (cur_cfg). Prints milliseconds. Needs root and Open vSwitch.
#
#   scripts/bench-ovs-reconfigure.sh [PORTS]      (default 1000)
set -euo pipefail
ports=${1:-1000}
ns=ovlrc
d=$(mktemp -d /tmp/ovlrc.XXXXXX)
export OVS_RUNDIR=$d OVS_DBDIR=$d OVS_LOGDIR=$d
vsctl=(ovs-vsctl "--db=unix:$d/db.sock")
cleanup() {
    kill "$(cat "$d/vsd.pid" 2>/dev/null)" "$(cat "$d/ovsdb.pid" 2>/dev/null)" 2>/dev/null || true
    sleep 1
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "$d"
}
trap cleanup EXIT
ip netns del "$ns" 2>/dev/null || true
ip netns add "$ns"
in_ns=(ip netns exec "$ns")
ovsdb-tool create "$d/conf.db" /usr/share/openvswitch/vswitch.ovsschema
"${in_ns[@]}" ovsdb-server "$d/conf.db" "--remote=punix:$d/db.sock" "--pidfile=$d/ovsdb.pid" \
    --detach "--log-file=$d/ovsdb.log"
"${vsctl[@]}" --no-wait init
"${in_ns[@]}" ovs-vswitchd "unix:$d/db.sock" "--pidfile=$d/vsd.pid" --detach "--log-file=$d/vsd.log"
"${vsctl[@]}" add-br br-int -- set bridge br-int datapath_type=netdev
"${in_ns[@]}" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
for i in $(seq 1 $((ports + 5))); do
    echo "link add p$i type veth peer q$i"
    echo "link set p$i up"
    echo "link set q$i up"
done > "$d/ip.batch"
"${in_ns[@]}" ip -batch "$d/ip.batch"
add=()
for i in $(seq 1 "$ports"); do add+=(-- add-port br-int "p$i" tag=5); done
"${vsctl[@]}" --no-wait "${add[@]}"
for _ in $(seq 1 300); do
    numbered=$("${vsctl[@]}" --bare --columns=ofport find interface | grep -c '^[1-9]' || true)
    [ "$numbered" -gt "$ports" ] && break
    sleep 1
done
echo "$ports ports on br-int, $numbered interfaces numbered"
sleep 5
ms() {
    local s e
    s=$(date +%s%N)
    "$@" >/dev/null
    e=$(date +%s%N)
    echo $(((e - s) / 1000000))
}
for k in 1 2 3 4 5; do
    a=$(ms "${vsctl[@]}" add-port br-int "p$((ports + k))" tag=6)
    b=$(ms "${vsctl[@]}" set port "p$k" tag=7)
    c=$(ms "${vsctl[@]}" set port "p$((10 + k))" "external_ids:ovl-endpoint=x$k")
    r=$(ms "${vsctl[@]}" del-port br-int "p$((ports + k))")
    echo "round $k: add-port $a ms, retag $b ms, relabel $c ms, del-port $r ms"
done
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
