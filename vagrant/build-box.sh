#!/usr/bin/env bash
# Builds the Debian bookworm VM image of ovl's VM lab and Vagrant lab, offline from Debian
# packages (debootstrap from the mirror apt already uses; nothing is pulled from an image
# registry), and packs it twice:
#
#   disk.qcow2 + vmlinuz + initrd.img   for direct QEMU use (`ovl lab up --vm`): a partitionless
#                                       ext4 root, booted with the kernel outside the disk
#                                       (root=/dev/vda), which needs no boot loader
#   ovl-bookworm.box                    a Vagrant box for the libvirt provider: the same disk
#                                       plus the kernel, the initrd and a box Vagrantfile that
#                                       boots them directly
#
# The result is cached under $OVL_VM_CACHE (default /var/cache/ovl/vm), in a directory named
# by a hash of this script: it is built once per machine and reused while its inputs are
# unchanged. The last line printed is that directory. Concurrent runs wait for each other.
#
# Inside the image:
# - root logs in over ssh with the key in the cache directory (`id_ed25519`, made by this
#   script; the VM lab uses it), user `vagrant` with Vagrant's well-known key and password-less
#   sudo (Vagrant replaces the key on first boot);
# - systemd-networkd: DHCP on eth0 only (Vagrant's management NIC); other NICs are configured
#   by whoever boots the image, e.g. with `ip=` on the kernel command line (turned into
#   networkd files by systemd-network-generator) or by Vagrant;
# - the host name comes from `systemd.hostname=` on the kernel command line, else `ovl-vm`,
#   and resolves without /etc/hosts (nss-myhostname; sudo needs it);
# - /etc/machine-id empty, so every VM derives its own identity and MAC addresses, and no
#   prebuilt Open vSwitch database (each VM creates its own);
# - the packages `deploy/install-deps.sh` would install, so provisioning downloads nothing.
#
# Usage: vagrant/build-box.sh     (as root; needs debootstrap, mkfs.ext4, qemu-img)
set -euo pipefail

cache_root=${OVL_VM_CACHE:-/var/cache/ovl/vm}
suite=bookworm
packages=(
    systemd-sysv udev kmod dbus libnss-myhostname linux-image-amd64 initramfs-tools
    openssh-server sudo rsync ca-certificates
    openvswitch-switch iproute2 nftables iputils-ping ethtool iperf3 tcpdump procps psmisc
)
image_size=3G

die() {
    echo "build-box: $*" >&2
    exit 1
}

[[ $(id -u) -eq 0 ]] || die "run as root (debootstrap and mkfs need it)"
for tool in debootstrap mkfs.ext4 qemu-img tar sha256sum ssh-keygen; do
    command -v "$tool" >/dev/null || die "'$tool' is missing; run deploy/install-deps.sh with OVL_VM_PACKAGES=1"
done

# The mirror apt already uses: the first deb URI of the main archive (deb822 or one-line format).
mirror() {
    local uri
    uri=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -n1 || true)
    if [[ -z $uri ]]; then
        uri=$(grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list |
            awk '{for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; exit}}' | grep -v security | head -n1 || true)
    fi
    [[ -n $uri ]] || die "cannot find the Debian mirror in /etc/apt/sources.list*"
    echo "$uri"
}

script_hash=$(sha256sum "$0" | cut -c1-16)
out="$cache_root/$suite-$script_hash"
mkdir -p "$cache_root"

exec 9>"$cache_root/.lock"
flock 9

if [[ -f $out/ready ]]; then
    echo "build-box: reusing the image built on $(cat "$out/ready")" >&2
    echo "$out"
    exit 0
fi

work=$(mktemp -d "$cache_root/.build.XXXXXX")
cleanup() { rm -rf "$work"; }
trap cleanup EXIT
root="$work/root"

started=$SECONDS
src=$(mirror)
echo "build-box: debootstrap $suite from $src (a few minutes)" >&2
debootstrap --variant=minbase --include="$(
    IFS=,
    echo "${packages[*]}"
)" "$suite" "$root" "$src" >"$work/debootstrap.log" 2>&1 ||
    {
        tail -n 30 "$work/debootstrap.log" >&2
        die "debootstrap failed (log above)"
    }
echo "build-box: debootstrap took $((SECONDS - started)) s" >&2

# Identity: made on first boot, per VM.
: >"$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"
echo ovl-vm >"$root/etc/hostname"
rm -f "$root/etc/ssh/ssh_host_"*
cat >"$root/etc/systemd/system/ssh-host-keys.service" <<'EOF'
[Unit]
Description=Generate this VM's ssh host keys
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A
RemainAfterExit=yes

[Install]
WantedBy=multi-user.target
EOF
ln -sf /etc/systemd/system/ssh-host-keys.service \
    "$root/etc/systemd/system/multi-user.target.wants/ssh-host-keys.service"

# Each VM creates its own OVS database (the packaged one carries the build's system-id).
rm -f "$root/etc/openvswitch/conf.db" "$root/etc/openvswitch/system-id.conf"

cat >"$root/etc/fstab" <<'EOF'
/dev/vda / ext4 defaults,errors=remount-ro 0 1
EOF

# Network: systemd-networkd; DHCP only on eth0 (Vagrant's NIC). The VM lab gives eth0 a static
# address with ip= on the kernel command line instead: systemd-network-generator turns that
# into /run/systemd/network/90-eth0.network, which sorts before this 99- file and so wins.
mkdir -p "$root/etc/systemd/network"
cat >"$root/etc/systemd/network/99-eth0-dhcp.network" <<'EOF'
[Match]
Name=eth0

[Network]
DHCP=ipv4
EOF
ln -sf /lib/systemd/system/systemd-networkd.service \
    "$root/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
ln -sf /lib/systemd/system/systemd-network-generator.service \
    "$root/etc/systemd/system/sysinit.target.wants/systemd-network-generator.service"
# A serial getty on the console interleaves with boot output and hangs it up; the lab logs in
# over ssh.
ln -sf /dev/null "$root/etc/systemd/system/serial-getty@ttyS0.service"

# Logins: root with the lab's key, vagrant with Vagrant's well-known key.
ssh-keygen -q -t ed25519 -N '' -C ovl-vm-lab -f "$work/id_ed25519"
install -d -m 700 "$root/root/.ssh"
install -m 600 "$work/id_ed25519.pub" "$root/root/.ssh/authorized_keys"
chroot "$root" useradd --create-home --shell /bin/bash vagrant
echo 'vagrant:vagrant' | chroot "$root" chpasswd
echo 'vagrant ALL=(ALL) NOPASSWD: ALL' >"$root/etc/sudoers.d/vagrant"
chmod 440 "$root/etc/sudoers.d/vagrant"
vagrant_key=$(find /usr/share/rubygems-integration /usr/share/vagrant /opt/vagrant \
    -path '*keys/vagrant.pub' 2>/dev/null | head -n1 || true)
install -d -m 700 -o 1000 -g 1000 "$root/home/vagrant/.ssh"
if [[ -n $vagrant_key ]]; then
    install -m 600 -o 1000 -g 1000 "$vagrant_key" "$root/home/vagrant/.ssh/authorized_keys"
else
    echo "build-box: Vagrant's public key not found (is vagrant installed?); the box gets the lab key" >&2
    install -m 600 -o 1000 -g 1000 "$work/id_ed25519.pub" "$root/home/vagrant/.ssh/authorized_keys"
fi
# Vagrant connects before DNS is configured; don't let sshd wait on reverse lookups.
echo 'UseDNS no' >"$root/etc/ssh/sshd_config.d/ovl-vm.conf"

# Keep the image small: package caches and documentation are not needed in a lab VM.
chroot "$root" apt-get clean
rm -rf "$root/var/lib/apt/lists/"* "$root/usr/share/doc/"* "$root/usr/share/man/"*

kernel=$(find "$root/boot" -name 'vmlinuz-*' | sort | tail -n1)
initrd=$(find "$root/boot" -name 'initrd.img-*' | sort | tail -n1)
[[ -n $kernel && -n $initrd ]] || die "no kernel or initrd in the image's /boot"
cp "$kernel" "$work/vmlinuz"
cp "$initrd" "$work/initrd.img"

echo "build-box: making the disk image" >&2
mkfs.ext4 -q -L ovl-root -d "$root" "$work/disk.raw" "$image_size"
qemu-img convert -O qcow2 "$work/disk.raw" "$work/disk.qcow2"
rm -f "$work/disk.raw"
rm -rf "$root"

# The Vagrant box (libvirt provider): the disk plus a box Vagrantfile that boots the kernel
# and initrd shipped beside it, since the disk has no boot loader.
virtual_size=$(qemu-img info --output=json "$work/disk.qcow2" |
    sed -n 's/.*"virtual-size": *\([0-9]*\).*/\1/p' | head -n1)
box="$work/box"
mkdir -p "$box"
cp "$work/vmlinuz" "$work/initrd.img" "$box/"
ln "$work/disk.qcow2" "$box/box.img"
cat >"$box/metadata.json" <<EOF
{"provider": "libvirt", "format": "qcow2", "virtual_size": $(((virtual_size + 1073741823) / 1073741824))}
EOF
cat >"$box/Vagrantfile" <<'EOF'
# ovl's lab box: a partitionless disk booted with the kernel and initrd shipped in the box.
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |libvirt|
    libvirt.kernel = File.join(__dir__, "vmlinuz")
    libvirt.initrd = File.join(__dir__, "initrd.img")
    libvirt.cmd_line = "root=/dev/vda rw console=ttyS0 net.ifnames=0"
  end
end
EOF
tar -C "$box" -czf "$work/ovl-bookworm.box" metadata.json Vagrantfile box.img vmlinuz initrd.img
rm -rf "$box"

date -u +%Y-%m-%dT%H:%M:%SZ >"$work/ready"
rm -f "$work/debootstrap.log"
chmod 755 "$work"
mv "$work" "$out"
trap - EXIT
echo "build-box: built $out in $((SECONDS - started)) s" >&2
echo "$out"
