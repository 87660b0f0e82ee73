#!/usr/bin/env bash
# The lab demo (on the last host, after its agent is up): a tenant `demo`, one endpoint in
# the `demo` namespace of the first host and one in this host's, then a ping between them
# through the overlay. Idempotent: rerun with `vagrant provision HOST --provision-with demo`.
set -euo pipefail
: "${OVL_CONTROLLER_IP:?set by the Vagrantfile}" "${OVL_DEMO_HOST:?}" "${OVL_DEMO_PEER:?}"
export OVL_CONTROLLER="$OVL_CONTROLLER_IP:7300"
export OVL_CREDENTIALS=/ovl-demo/admin

here="demo-$OVL_DEMO_HOST"
peer="demo-$OVL_DEMO_PEER"

# Provisioning made this host's "container" namespace; a reboot since has removed it (network
# namespaces live in memory), and the agent reports the endpoint's target missing until it is
# back.
if [[ ! -e /run/netns/demo ]]; then
    ip netns add demo
fi

command -v ovl >/dev/null || {
    echo "demo: the ovl CLI is not installed on $(hostname) (deploy/install.sh installs it with every role)" >&2
    exit 1
}

# The first host may still be provisioning when a parallel `vagrant up` gets here: wait while
# it is unknown to the controller (or the controller is unreachable), saying why.
for i in $(seq 1 60); do
    if err=$(ovl host show "$OVL_DEMO_PEER" 2>&1 >/dev/null); then
        break
    fi
    if ((i % 6 == 1)); then
        echo "demo: waiting for $OVL_DEMO_PEER to join: ${err##*$'\n'}" >&2
    fi
    sleep 10
done
ovl host show "$OVL_DEMO_PEER" >/dev/null

ovl tenant show demo >/dev/null 2>&1 || ovl tenant create demo --subnet 10.100.0.0/24
for spec in "$OVL_DEMO_PEER:$peer" "$OVL_DEMO_HOST:$here"; do
    host=${spec%%:*}
    name=${spec#*:}
    if ! ovl endpoint show "$name" >/dev/null 2>&1; then
        ovl endpoint create demo --host "$host" --name "$name" --netns demo --wait
    fi
done

peer_ip=$(ovl --output json endpoint show "$peer" | grep -o '"ip": *"[0-9.]*"' | grep -o '[0-9.]*"$' | tr -d '"')
[[ -n "$peer_ip" ]] || {
    echo "demo: cannot read the address of $peer" >&2
    exit 1
}
ovl endpoint list --tenant demo
echo "demo: pinging $peer ($peer_ip on $OVL_DEMO_PEER) from $here (on $OVL_DEMO_HOST)"
ip netns exec demo ping -c 5 -W 2 "$peer_ip"
echo "demo: the two namespaces reach each other through tenant demo"
