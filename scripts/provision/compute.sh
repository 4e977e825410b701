#!/bin/sh
# Provision a compute node: libvirt + qemu and the compute agent.
# Parameters: common.sh and agent.sh (COWFLEET_AGENT_ARGS="--hypervisor fake" runs no VMs).
. "$(dirname "$0")/common.sh"
ROLE=compute
install_packages libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils qemu-block-extra
if [ "$COWFLEET_INSTALL" = 1 ]; then
  # libvirt's default NAT network stays off: cowfleet guests use user-mode networking
  rm -f /etc/libvirt/qemu/networks/autostart/default.xml
fi
. "$PROVISION_DIR/agent.sh"
if [ "$COWFLEET_START" = 1 ] && [ ! -S /run/libvirt/libvirt-sock ]; then
  if [ -d /run/systemd/system ]; then
    systemctl enable -q --now libvirtd
  else
    virtlogd -d
    libvirtd -d
  fi
fi
start_role compute
