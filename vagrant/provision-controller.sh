#!/usr/bin/env bash
# Provisions the lab's controller VM (as root, from Vagrant): installs ovl's controller role,
# takes the lab PKI and the join token records staged by prepare.sh, and starts the controller
# with its main endpoint and its join endpoint on the management network.
set -euo pipefail
: "${OVL_CONTROLLER_IP:?set by the Vagrantfile}"

bash /ovl/deploy/install-deps.sh
bash /ovl/deploy/install.sh --role controller --bin-dir /ovl-bin

# The PKI is the lab's, made on the workstation; it is copied once and then belongs to the
# controller's user.
if [[ ! -e /etc/ovl/pki/ca.crt ]]; then
    cp -a /ovl-lab/pki/. /etc/ovl/pki/
fi
chown -R ovl:ovl /etc/ovl/pki
chmod 0700 /etc/ovl/pki

# Token records that this controller has not seen yet; a used one is never brought back.
shopt -s nullglob
tokens=/var/lib/ovl/join-tokens
for record in /ovl-lab/join-tokens/*; do
    [[ -f "$record" ]] || continue
    id=$(basename "$record")
    if [[ ! -e "$tokens/$id" && ! -e "$tokens/used/$id" ]]; then
        install -m 0600 -o ovl -g ovl "$record" "$tokens/$id"
    fi
done

sed -i -e "s|^OVL_LISTEN=.*|OVL_LISTEN=$OVL_CONTROLLER_IP:7300|" \
    -e "s|^OVL_JOIN_LISTEN=.*|OVL_JOIN_LISTEN=$OVL_CONTROLLER_IP:7301|" /etc/ovl/controller.env
systemctl enable ovl-controller
systemctl restart ovl-controller

for _ in $(seq 1 60); do
    if ovl --controller "$OVL_CONTROLLER_IP:7300" --credentials /etc/ovl/pki/admin status >/dev/null 2>&1; then
        echo "provision: the controller answers on $OVL_CONTROLLER_IP:7300 (joins on :7301)"
        exit 0
    fi
    sleep 1
done
journalctl -u ovl-controller --no-pager -n 50 >&2
echo "provision: the controller did not come up" >&2
exit 1
