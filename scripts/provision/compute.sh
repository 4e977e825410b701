#!/bin/sh
# Provision a compute node: libvirt + qemu and the compute agent.
# Parameters: common.sh and agent.sh (COWFLEET_AGENT_ARGS="--hypervisor fake" runs no VMs).
. "$(dirname "$0")/common.sh"
ROLE=compute
install_packages libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils qemu-block-extra procps
if [ "$COWFLEET_INSTALL" = 1 ]; then
  # libvirt's default NAT network stays off: cowfleet guests are on the node's own bridge
  rm -f /etc/libvirt/qemu/networks/autostart/default.xml
fi
# The instance network is routed, never NATed: the agent claims a subnet of
# the cluster's instance CIDR for this node (10.78.0.0/16 unless an operator
# set another with PUT /v1/network), keeps a bridge holding its gateway
# address, and routes each peer's subnet via the peer's node address. So the
# node forwards between its bridge and its uplink: net.ipv4.ip_forward=1, kept
# in /etc/sysctl.d. That reaches instances from other compute nodes; for the
# rest of a real network to reach them, the operator's routers need a route
# to each node's subnet via that node's address (static routes, or BGP
# announced from the nodes) -- the network's job, not cowfleet's. On the
# racks lab (COWFLEET_ROOT, nothing installed or started) nothing here
# touches the host: the lab sets forwarding inside each compute namespace.
host_sysctl net.ipv4.ip_forward 1 60-cowfleet-forwarding.conf
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
