#!/usr/bin/env bash
# Static checks of everything under deploy/ and vagrant/ that can be checked without booting a
# machine: shellcheck on every shell script, `systemd-analyze verify` on the units as
# deploy/install.sh installs them, and `vagrant validate` on the Vagrantfile. Each check is
# also run once against a deliberately broken input, to prove it can fail.
#
#   scripts/check-deploy.sh [BIN_DIR]    (BIN_DIR: built binaries, default target/debug)
#
# Needs shellcheck, systemd-analyze and vagrant (OVL_DEV_PACKAGES=1 deploy/install-deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
bin_dir="${1:-$repo/target/debug}"

scratch=$(mktemp -d -t ovl-check-deploy.XXXXXX)
# A deliberately broken Vagrantfile sits beside the real one while it is checked.
broken_vagrantfile="vagrant/.Vagrantfile.broken.$$"
trap 'rm -rf "$scratch" "$broken_vagrantfile"' EXIT

fail() {
    echo "check-deploy: FAIL: $*" >&2
    exit 1
}

# --- shellcheck: every *.sh, and every other file with a shell shebang, outside build output.
scripts=()
while IFS= read -r -d '' f; do
    case "$f" in
    *.sh) scripts+=("$f") ;;
    *)
        if head -c 64 "$f" 2>/dev/null | head -n 1 | grep -Eq '^#!.*(/|env )(ba)?sh\b'; then
            scripts+=("$f")
        fi
        ;;
    esac
done < <(find . \( -name target -o -name .git -o -name .vagrant -o -name .lab \) -prune \
    -o -type f -print0)
((${#scripts[@]} > 0)) || fail "no shell scripts found"
echo "check-deploy: shellcheck on ${#scripts[@]} scripts" >&2
printf '  %s\n' "${scripts[@]}" >&2
shellcheck --external-sources "${scripts[@]}"
# shellcheck disable=SC2016 # the $ is meant literally: it is the bug planted in the script
printf '#!/bin/sh\necho $undefined_and_unquoted\n' >"$scratch/broken.sh"
if shellcheck "$scratch/broken.sh" >/dev/null 2>&1; then
    fail "shellcheck accepted a broken script; the check proves nothing"
fi

# --- systemd-analyze verify, on the units installed into a scratch root. The root also gets a
# copy of the system's units, so the ordering targets (network-online.target,
# openvswitch-switch.service, docker.service) resolve, and verify checks that ExecStart=
# binaries exist there.
# systemd-analyze reports many problems (unknown keys, bad values) as warnings with exit status
# 0, so any output at all counts as a failure.
verify_units() {
    local root=$1 out
    shift
    if ! out=$(systemd-analyze verify --root="$root" "$@" 2>&1); then
        printf '%s\n' "$out" >&2
        return 1
    fi
    if [[ -n "$out" ]]; then
        printf '%s\n' "$out" >&2
        return 1
    fi
}

root="$scratch/root"
bash deploy/install.sh --destdir "$root" --role all --docker --bin-dir "$bin_dir" 2>/dev/null
mkdir -p "$root/usr/lib/systemd"
cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
[[ -e "$root/usr/lib/systemd/system/openvswitch-switch.service" ]] ||
    fail "openvswitch-switch.service is not installed here; run deploy/install-deps.sh"
units=(ovl-controller.service ovl-agent.service ovl-docker.service)
echo "check-deploy: systemd-analyze verify ${units[*]}" >&2
verify_units "$root" "${units[@]}" || fail "systemd-analyze verify found problems in the units"

unitdir="$root/usr/local/lib/systemd/system"
cp "$unitdir/ovl-agent.service" "$scratch/agent.good"
sed -i 's/^ProtectSystem=strict/ProtectSystem=strickt/' "$unitdir/ovl-agent.service"
if verify_units "$root" ovl-agent.service 2>/dev/null; then
    fail "systemd-analyze verify accepted a unit with a bad value"
fi
cp "$scratch/agent.good" "$unitdir/ovl-agent.service"
rm "$root/usr/local/bin/ovl-agent"
if verify_units "$root" ovl-agent.service 2>/dev/null; then
    fail "systemd-analyze verify accepted a unit whose binary is missing"
fi
# The Docker driver's unit must start before dockerd looks for the plugin socket, and its
# ExecStart must read the agent's configuration, where the controller and credentials are.
docker_unit="$unitdir/ovl-docker.service"
grep -qx 'Before=docker.service' "$docker_unit" ||
    fail "ovl-docker.service is not ordered before docker.service"
for line in Wants=ovl-agent.service After=ovl-agent.service; do
    grep -qx "$line" "$docker_unit" || fail "ovl-docker.service lacks $line"
done
grep -q '^ExecStart=/usr/local/bin/ovl-docker run --config /etc/ovl/agent.toml' "$docker_unit" ||
    fail "ovl-docker.service does not run the installed driver with the agent's configuration"
"$root/usr/local/bin/ovl-docker" run --help | grep -q -- '--docker-socket' ||
    fail "the installed ovl-docker does not run"

# --- vagrant validate. --ignore-provider: the libvirt plugin is not installed here, and no
# VM can boot; everything else in the Vagrantfile (Ruby, machine and provisioner settings) is
# still evaluated and checked.
export VAGRANT_CHECKPOINT_DISABLE=1
export VAGRANT_HOME="$scratch/vagrant.d"
# Vagrant's per-project state (.vagrant/) goes to the scratch directory, not the tree.
export VAGRANT_DOTFILE_PATH="$scratch/dotvagrant"
echo "check-deploy: vagrant validate" >&2
(cd vagrant && vagrant validate --ignore-provider) || fail "vagrant validate rejected vagrant/Vagrantfile"
# The broken copy sits beside the original so its relative provisioner paths still resolve.
sed 's/config\.vm\.box = /config.vm.boxx = /' vagrant/Vagrantfile >"$broken_vagrantfile"
if (cd vagrant && VAGRANT_VAGRANTFILE="$(basename "$broken_vagrantfile")" \
    vagrant validate --ignore-provider >/dev/null 2>&1); then
    fail "vagrant validate accepted a broken Vagrantfile"
fi

echo "check-deploy: all deployment checks passed" >&2
