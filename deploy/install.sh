#!/usr/bin/env bash
# Installs (or uninstalls) ovl on this machine: binaries, systemd units, /etc/ovl with sample
# configuration, and the state directories with their owners and modes.
#
#   deploy/install.sh [--role controller|agent|all] [--docker] [--cni-dir DIR] [--bin-dir DIR] [--destdir DIR] [--start]
#   deploy/install.sh --uninstall [--purge] [--role ...] [--cni-dir DIR] [--destdir DIR]
#
# --docker    with the agent role: also the Docker network driver (ovl-docker, its unit, its
#             state directory), for hosts that run Docker (docs/docker.md). Uninstalling the
#             agent role always removes it.
# --cni-dir   where the agent role puts the CNI plugin (ovl-cni, and ovl -> ovl-cni for
#             "type": "ovl"; docs/cni.md). Default: /usr/lib/cni where the target has it
#             (Debian's containernetworking-plugins, podman and containerd look there), else
#             /opt/cni/bin (the upstream default). Uninstalling looks in both unless given.
# --bin-dir   where the built binaries are (default: target/release of this checkout)
# --destdir   install into this scratch root instead of / (also read from $DESTDIR). With a
#             destdir nothing outside it is touched: no user is created, no owner is changed,
#             systemctl is never called and no service is started.
# --start     after installing, enable and start the role's units (not with a destdir).
# --uninstall remove binaries, units, and sample configs that were not edited; keep the PKI,
#             host credentials, databases and edited configs, and say so.
# --purge     with --uninstall: remove those too, and the ovl system user; with the agent
#             role, first run `ovl-agent cleanup` (every OVS row, link, router namespace and
#             nftables table ovl made on this host), once the agent is stopped.
#
# Layout (see docs/deploy.md):
#   /usr/local/bin/{ovl-controller,ovl,ovl-agent,ovl-docker}  0755
#   /usr/local/lib/systemd/system/ovl-{controller,agent,docker}.service 0644
#   /etc/ovl/                                                 0755 root
#   /etc/ovl/controller.env, /etc/ovl/agent.toml              0644 (kept if present)
#   /etc/ovl/pki/                                             0700 ovl   (controller)
#   /etc/ovl/host/                                            0700 root  (agent credentials)
#   /var/lib/ovl/                                             0750 ovl   (controller database)
#   /var/lib/ovl/join-tokens/                                 0700 ovl
#   /var/lib/ovl-agent/                                       0700 root
#   /var/lib/ovl-docker/                                      0700 root  (--docker)
#   /usr/lib/cni/ or /opt/cni/bin/{ovl-cni,ovl -> ovl-cni}    0755 (agent role)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")

role=all
bin_dir="$repo/target/release"
destdir="${DESTDIR:-}"
action=install
purge=0
start=0
docker=0
cni_dir=""

usage() {
    sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}

die() {
    echo "install: $*" >&2
    exit 1
}

while (($# > 0)); do
    case "$1" in
    --role)
        role="${2:-}"
        shift 2
        ;;
    --role=*)
        role="${1#*=}"
        shift
        ;;
    --bin-dir)
        bin_dir="${2:-}"
        shift 2
        ;;
    --bin-dir=*)
        bin_dir="${1#*=}"
        shift
        ;;
    --destdir)
        destdir="${2:-}"
        shift 2
        ;;
    --destdir=*)
        destdir="${1#*=}"
        shift
        ;;
    --uninstall)
        action=uninstall
        shift
        ;;
    --purge)
        purge=1
        shift
        ;;
    --start)
        start=1
        shift
        ;;
    --docker)
        docker=1
        shift
        ;;
    --cni-dir)
        cni_dir="${2:-}"
        shift 2
        ;;
    --cni-dir=*)
        cni_dir="${1#*=}"
        shift
        ;;
    -h | --help) usage 0 ;;
    *)
        echo "install: unknown argument '$1'" >&2
        usage 2
        ;;
    esac
done

case "$role" in
controller | agent | all) ;;
*) die "--role must be controller, agent or all, not '$role'" ;;
esac
if [[ -n "$destdir" ]]; then
    [[ "$destdir" == /* ]] || die "--destdir must be an absolute path, not '$destdir'"
    destdir="${destdir%/}"
    ((start == 0)) || die "--start cannot be used with a destdir: nothing is ever started there"
elif [[ $(id -u) -ne 0 ]]; then
    die "installing into / needs root; run with sudo, or pass --destdir DIR"
fi
((purge == 0)) || [[ "$action" == uninstall ]] || die "--purge only goes with --uninstall"
if [[ -n "$cni_dir" && "$cni_dir" != /* ]]; then
    die "--cni-dir must be an absolute path, not '$cni_dir'"
fi
if ((docker == 1)) && [[ "$role" == controller ]]; then
    die "--docker goes with the agent role (--role agent or all): the driver acts with the agent's credentials"
fi

BINDIR=/usr/local/bin
UNITDIR=/usr/local/lib/systemd/system
CONFDIR=/etc/ovl
USER_NAME=ovl

wants() { [[ "$role" == all || "$role" == "$1" ]]; }

# A path inside the target root.
root() { printf '%s%s' "$destdir" "$1"; }

# Only a real install changes owners or talks to systemd.
live() { [[ -z "$destdir" ]]; }

systemd_running() { live && [[ -d /run/systemd/system ]]; }

# system_dir PATH: makes sure a directory ovl shares with others exists, without changing it.
system_dir() {
    mkdir -p "$(root "$1")"
}

# install_dir PATH MODE OWNER: creates one of ovl's own directories with MODE, and OWNER
# (user:group) on a live install.
install_dir() {
    local path owner
    path=$(root "$1")
    owner="$3"
    mkdir -p "$path"
    chmod "$2" "$path"
    if live; then
        chown "$owner" "$path"
    fi
}

binaries=()
units=()
samples=()
# Every role gets the CLI: an operator on an agent host uses `ovl` as much as on the
# controller's machine (it needs an admin bundle to do anything).
binaries+=(ovl)
if wants controller; then
    binaries+=(ovl-controller)
    units+=(ovl-controller.service)
    samples+=(controller.env)
fi
# The CNI plugin's directories: the one to install into, and the ones to uninstall from.
CNI_DIRS=(/usr/lib/cni /opt/cni/bin)
if [[ -n "$cni_dir" ]]; then
    CNI_DIRS=("$cni_dir")
elif [[ -d "$(root /usr/lib/cni)" ]]; then
    cni_dir=/usr/lib/cni
else
    cni_dir=/opt/cni/bin
fi
# Runtimes run the plugin a configuration's "type" names, so "type": "ovl" needs the name ovl.
CNI_PLUGIN=ovl-cni
CNI_TYPE=ovl

if wants agent; then
    binaries+=(ovl-agent)
    units+=(ovl-agent.service)
    samples+=(agent.toml)
    # Removing the agent removes the driver that needs it, whether or not --docker is given.
    if ((docker == 1)) || [[ "$action" == uninstall ]]; then
        binaries+=(ovl-docker)
        units+=(ovl-docker.service)
    fi
fi

do_install() {
    local missing=() b
    for b in "${binaries[@]}"; do
        [[ -x "$bin_dir/$b" ]] || missing+=("$b")
    done
    if wants agent && [[ ! -x "$bin_dir/$CNI_PLUGIN" ]]; then
        missing+=("$CNI_PLUGIN")
    fi
    if ((${#missing[@]} > 0)); then
        die "not built in $bin_dir: ${missing[*]}; run 'cargo build --release' or pass --bin-dir"
    fi

    if wants controller && live && ! getent passwd "$USER_NAME" >/dev/null; then
        echo "install: creating the system user $USER_NAME" >&2
        useradd --system --user-group --home-dir /var/lib/ovl --no-create-home \
            --shell /usr/sbin/nologin --comment "ovl controller" "$USER_NAME"
    fi

    system_dir "$BINDIR"
    for b in "${binaries[@]}"; do
        install -m 0755 "$bin_dir/$b" "$(root "$BINDIR/$b")"
    done

    if wants agent; then
        install_cni_plugin
    fi

    system_dir "$UNITDIR"
    local u
    for u in "${units[@]}"; do
        install -m 0644 "$here/systemd/$u" "$(root "$UNITDIR/$u")"
    done

    install_dir "$CONFDIR" 0755 root:root
    local s dest
    for s in "${samples[@]}"; do
        dest=$(root "$CONFDIR/$s")
        if [[ -e "$dest" ]]; then
            echo "install: keeping the existing $CONFDIR/$s" >&2
        else
            install -m 0644 "$here/config/$s" "$dest"
        fi
    done

    if wants controller; then
        install_dir "$CONFDIR/pki" 0700 "$USER_NAME:$USER_NAME"
        install_dir /var/lib/ovl 0750 "$USER_NAME:$USER_NAME"
        install_dir /var/lib/ovl/join-tokens 0700 "$USER_NAME:$USER_NAME"
    fi
    if wants agent; then
        install_dir "$CONFDIR/host" 0700 root:root
        install_dir /var/lib/ovl-agent 0700 root:root
    fi
    if ((docker == 1)); then
        install_dir /var/lib/ovl-docker 0700 root:root
    fi

    if systemd_running; then
        systemctl daemon-reload
        if ((start == 1)); then
            for u in "${units[@]}"; do
                systemctl enable --now "$u"
            done
        fi
    fi

    echo "install: installed the $role role into ${destdir:-/}" >&2
    if wants controller; then
        echo "  controller: sudo -u $USER_NAME ovl-controller init --pki $CONFDIR/pki, then systemctl enable --now ovl-controller" >&2
    fi
    if wants agent; then
        echo "  agent: ovl-agent join ... --out $CONFDIR/host, set 'controller' in $CONFDIR/agent.toml, then systemctl enable --now ovl-agent" >&2
    fi
    if wants agent; then
        echo "  cni: $cni_dir/$CNI_TYPE; a network configuration with \"type\": \"$CNI_TYPE\" (docs/cni.md)" >&2
    fi
    if ((docker == 1)); then
        echo "  docker: systemctl enable --now ovl-docker, then docker network create -d ovl --ipam-driver ovl --ipam-opt ovl.tenant=TENANT NETWORK" >&2
    fi
}

# install_cni_plugin: ovl-cni into the CNI directory, and the name runtimes look up for
# "type": "ovl" as a link to it (never replacing another plugin of that name).
install_cni_plugin() {
    local link
    system_dir "$cni_dir"
    install -m 0755 "$bin_dir/$CNI_PLUGIN" "$(root "$cni_dir/$CNI_PLUGIN")"
    link=$(root "$cni_dir/$CNI_TYPE")
    if [[ -e "$link" && ! -L "$link" ]]; then
        echo "install: kept $cni_dir/$CNI_TYPE, which is not ours; configure \"type\": \"$CNI_PLUGIN\"" >&2
    else
        ln -sfn "$CNI_PLUGIN" "$link"
    fi
}

# uninstall_cni_plugin: removes ovl-cni and our link to it from every CNI directory.
uninstall_cni_plugin() {
    local d link
    for d in "${CNI_DIRS[@]}"; do
        rm -f "$(root "$d/$CNI_PLUGIN")"
        link=$(root "$d/$CNI_TYPE")
        if [[ -L "$link" && $(readlink "$link") == "$CNI_PLUGIN" ]]; then
            rm -f "$link"
        fi
    done
}

# remove_dir PATH: deletes PATH if it is empty, else says what stays.
remove_dir() {
    local path
    path=$(root "$1")
    [[ -d "$path" ]] || return 0
    if rmdir "$path" 2>/dev/null; then
        return 0
    fi
    echo "install: kept $1 (not empty; --purge removes it)" >&2
}

# purge_data_plane: removes what ovl built on this host with the installed agent's own
# `ovl-agent cleanup` (the agent is stopped by now), while its configuration is still there.
# In a scratch root it only says so: the data plane is the machine's, not the root's.
purge_data_plane() {
    local agent
    agent=$(root "$BINDIR/ovl-agent")
    if [[ ! -x "$agent" ]]; then
        echo "install: no $BINDIR/ovl-agent installed; skipping ovl-agent cleanup" >&2
        return 0
    fi
    if ! live; then
        echo "install: would run $BINDIR/ovl-agent cleanup (not in a scratch root: it cleans this machine)" >&2
        return 0
    fi
    echo "install: $BINDIR/ovl-agent cleanup" >&2
    "$agent" cleanup --config "$CONFDIR/agent.toml" ||
        echo "install: ovl-agent cleanup did not finish; run it again before reinstalling" >&2
}

do_uninstall() {
    local u b
    if systemd_running; then
        for u in "${units[@]}"; do
            systemctl disable --now "$u" 2>/dev/null || true
        done
    fi
    for u in "${units[@]}"; do
        rm -f "$(root "$UNITDIR/$u")"
    done
    if ((purge == 1)) && wants agent; then
        purge_data_plane
    fi
    for b in "${binaries[@]}"; do
        rm -f "$(root "$BINDIR/$b")"
    done
    if wants agent; then
        uninstall_cni_plugin
    fi

    local s dest
    for s in "${samples[@]}"; do
        dest=$(root "$CONFDIR/$s")
        [[ -e "$dest" ]] || continue
        if ((purge == 1)) || cmp -s "$dest" "$here/config/$s"; then
            rm -f "$dest"
        else
            echo "install: kept $CONFDIR/$s (edited; --purge removes it)" >&2
        fi
    done

    local data=()
    if wants controller; then
        data+=("$CONFDIR/pki" /var/lib/ovl)
    fi
    if wants agent; then
        data+=("$CONFDIR/host" /var/lib/ovl-agent /var/lib/ovl-docker)
    fi
    local d
    for d in "${data[@]}"; do
        if ((purge == 1)); then
            rm -rf "$(root "$d")"
        elif [[ "$d" == /var/lib/ovl ]]; then
            # Empty token directories are not data.
            remove_dir /var/lib/ovl/join-tokens/used
            remove_dir /var/lib/ovl/join-tokens
            remove_dir "$d"
        else
            remove_dir "$d"
        fi
    done

    # /etc/ovl goes when nothing is left in it; in a scratch root, so do the directories
    # the install created around ovl's own.
    local shared=("$CONFDIR") p
    if [[ -n "$destdir" ]]; then
        shared+=("$UNITDIR" /usr/local/lib/systemd /usr/local/lib "$BINDIR" /usr/local
            "${CNI_DIRS[@]}" /usr/lib /opt/cni /opt /usr /etc /var/lib /var)
    fi
    for p in "${shared[@]}"; do
        if [[ -d "$(root "$p")" ]]; then
            rmdir "$(root "$p")" 2>/dev/null || true
        fi
    done

    if systemd_running; then
        systemctl daemon-reload
    fi
    if ((purge == 1)) && wants controller && live && getent passwd "$USER_NAME" >/dev/null; then
        userdel "$USER_NAME" || echo "install: could not remove the user $USER_NAME" >&2
    fi
    echo "install: uninstalled the $role role from ${destdir:-/}" >&2
}

if [[ "$action" == install ]]; then
    do_install
else
    do_uninstall
fi
