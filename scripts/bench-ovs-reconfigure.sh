#!/usr/bin/env bash
# What one OVSDB change costs ovs-vswitchd on a bridge with many ports (issue 12, row 3's
# floor): one ovs-vswitchd with the userspace `netdev` datapath, as in the namespace lab, in
# a namespace of its own, given PORTS veth ports on br-int; then, over five rounds, one port
# added, one retagged, one relabelled and one deleted, each `ovs-vsctl` waiting until
# ovs-vswitchd has applied it (cur_cfg). Then the floor of any attach without an OVSDB write
# (a warm pool): ten spare ports are on br-int with the tenant's tag from the start, and ten
# times a namespace is given one by moving the spare's peer into it (address, up), then pings
# a prober namespace on another port; and, for comparison, a ping between endpoints attached
# all along. Prints milliseconds. Needs root and Open vSwitch.
#
#   scripts/bench-ovs-reconfigure.sh [PORTS]      (default 1000)
set -euo pipefail
ports=${1:-1000}
ns=ovlrc
spares=10
d=$(mktemp -d /tmp/ovlrc.XXXXXX)
export OVS_RUNDIR=$d OVS_DBDIR=$d OVS_LOGDIR=$d
vsctl=(ovs-vsctl "--db=unix:$d/db.sock")
cleanup() {
    kill "$(cat "$d/vsd.pid" 2>/dev/null)" "$(cat "$d/ovsdb.pid" 2>/dev/null)" 2>/dev/null || true
    sleep 1
    for k in pr $(seq 1 $spares); do ip netns del "$ns-$k" 2>/dev/null || true; done
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
# p1…pPORTS on the bridge, 5 more added and deleted by the rounds, then the spares and the
# prober's port (all on the bridge from the start).
first_spare=$((ports + 6))
prober=$((first_spare + spares))
for i in $(seq 1 "$prober"); do
    echo "link add p$i type veth peer q$i"
    echo "link set p$i up"
    echo "link set q$i up"
done > "$d/ip.batch"
"${in_ns[@]}" ip -batch "$d/ip.batch"
add=()
for i in $(seq 1 "$ports") $(seq "$first_spare" "$prober"); do
    add+=(-- add-port br-int "p$i" tag=5)
done
"${vsctl[@]}" --no-wait "${add[@]}"
for _ in $(seq 1 300); do
    numbered=$("${vsctl[@]}" --bare --columns=ofport find interface | grep -c '^[1-9]' || true)
    [ "$numbered" -gt "$((ports + spares))" ] && break
    sleep 1
done
echo "$ports ports (and $((spares + 1)) more) on br-int, $numbered interfaces numbered"
ip netns add "$ns-pr"
"${in_ns[@]}" ip link set "q$prober" netns "$ns-pr"
ip -n "$ns-pr" addr add 10.9.0.250/24 dev "q$prober"
ip -n "$ns-pr" link set "q$prober" up
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
for k in $(seq 1 $spares); do
    c="$ns-$k" q="q$((first_spare + k - 1))"
    ip netns add "$c"
    s=$(date +%s%N)
    "${in_ns[@]}" ip link set "$q" netns "$c"
    ip -n "$c" addr add "10.9.0.$k/24" dev "$q"
    ip -n "$c" link set "$q" up
    m=$(date +%s%N)
    ip netns exec "$c" ping -n -c 1 -W 2 10.9.0.250 >/dev/null || echo "spare $k: no reply"
    e=$(date +%s%N)
    echo "spare $k: moved and configured in $(((m - s) / 1000000)) ms, first reply after $(((e - s) / 1000000)) ms"
    sleep 1
done
for k in 1 2 3 4 5; do
    ip -n "$ns-$k" neigh flush all
    ip -n "$ns-pr" neigh flush all
    echo "attached all along $k: one ping $(ms ip netns exec "$ns-$k" ping -n -c 1 -W 2 10.9.0.250) ms"
done
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
