#!/usr/bin/env bash
# libvirt's QEMU driver, also in embedded mode, resolves its compiled-in default account and
# group (both libvirt-qemu on Debian) while building its configuration, before qemu.conf can
# override them with root. Debian creates them in libvirt-daemon-system, which we do not want
# (it brings systemd units and a system daemon), so create the same system account ourselves.
set -euo pipefail
getent passwd libvirt-qemu >/dev/null && getent group libvirt-qemu >/dev/null && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "libvirt: account libvirt-qemu missing; run drivers/libvirt/dev-setup.sh as root" >&2
    exit 0
fi
getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
getent passwd libvirt-qemu >/dev/null || useradd --system --no-create-home --home-dir /var/lib/libvirt \
    --shell /usr/sbin/nologin --gid libvirt-qemu --comment "Libvirt Qemu" libvirt-qemu
