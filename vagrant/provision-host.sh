#!/usr/bin/env bash
# Provisions a lab host VM (as root, from Vagrant): installs Open vSwitch with the kernel
# datapath and ovl's agent role, joins the controller with the host's one-time token (the key
# is generated here and never leaves the VM), points the agent at the controller and the
# underlay address, and starts it. `systemctl restart ovl-agent` returns once the agent has
# applied its first intent (Type=notify).
set -euo pipefail
: "${OVL_HOST:?set by the Vagrantfile}" "${OVL_CONTROLLER_IP:?}" "${OVL_UNDERLAY_IP:?}"

bash /ovl/deploy/install-deps.sh
# The kernel datapath: with the module loaded the agent picks datapath=system by itself.
modprobe openvswitch
systemctl enable --now openvswitch-switch
bash /ovl/deploy/install.sh --role agent --bin-dir /ovl-bin

if [[ ! -e /etc/ovl/host/tls.key ]]; then
    hash=$(cat /ovl-lab/ca-hash)
    # The token goes through the environment, not the command line that `ps` shows.
    OVL_JOIN_TOKEN=$(cat /ovl-lab/token)
    export OVL_JOIN_TOKEN
    # With a parallel `vagrant up` the controller may not be up yet: retry while it cannot be
    # reached, but stop at once on a refusal (a wrong, used or expired token).
    joined=0
    for _ in $(seq 1 60); do
        if out=$(ovl-agent join --controller "$OVL_CONTROLLER_IP:7301" --ca-hash "$hash" \
            --host "$OVL_HOST" --out /etc/ovl/host 2>&1); then
            echo "$out"
            joined=1
            break
        fi
        if ! grep -q "cannot reach the join endpoint" <<<"$out"; then
            echo "$out" >&2
            exit 1
        fi
        sleep 10
    done
    unset OVL_JOIN_TOKEN
    if ((joined == 0)); then
        echo "provision: the controller's join endpoint never answered: $out" >&2
        exit 1
    fi
fi

cat >/etc/ovl/agent.toml <<TOML
# Written by vagrant/provision-host.sh; see /ovl/deploy/config/agent.toml for every key.
controller = "$OVL_CONTROLLER_IP:7300"
credentials = "/etc/ovl/host"
# Tunnels run on the underlay network, not on the management network the controller is on.
underlay_ip = "$OVL_UNDERLAY_IP"
underlay_mtu = 1500
datapath = "auto"
TOML

# The demo's "container" on every host: a plain network namespace.
if [[ ! -e /run/netns/demo ]]; then
    ip netns add demo
fi

systemctl enable ovl-agent
systemctl restart ovl-agent
echo "provision: $OVL_HOST joined; its agent has applied its first intent"
