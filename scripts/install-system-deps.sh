#!/bin/sh
# Install the Debian packages cowfleet needs; quick and silent when all are there.
set -eu
PACKAGES="python3 python3-venv python3-dev gcc pkg-config libvirt-dev
  zookeeper default-jre-headless libvirt-daemon-system libvirt-clients
  qemu-system-x86 qemu-utils qemu-block-extra tgt
  linux-image-cloud-amd64 busybox-static e2fsprogs
  syslinux syslinux-common mtools dosfstools fdisk iproute2 procps file cpio
  mmdebstrap gpg
  vagrant vagrant-libvirt rsync"   # vagrant: the tests run `vagrant validate` on the Vagrantfile
# mmdebstrap (+ gpg for its signed-by check): the Debian 12 cloud image (cowfleet/guest/debian.py)
missing=""
for p in $PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "installing Debian packages:$missing"
  if [ "$(id -u)" != 0 ]; then echo "run as root (apt-get and libvirtd need it)" >&2; exit 1; fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
# libvirt's default NAT network must never come up on these machines
rm -f /etc/libvirt/qemu/networks/autostart/default.xml
