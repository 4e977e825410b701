#!/bin/sh
# Provision a storage node: tgt (the iSCSI target) and the storage agent.
# Parameters: common.sh and agent.sh, and
#   COWFLEET_TGT_CONTROL_PORT  the management channel of this node's tgtd
#                              (tgtd -C N; default: none, the machine's tgtd).
#                              The racks lab gives each storage node a tgtd of
#                              its own, in its namespace, on its own channel.
. "$(dirname "$0")/common.sh"
ROLE=storage
TGT_CONTROL=${COWFLEET_TGT_CONTROL_PORT:-}
install_packages tgt qemu-utils       # qemu-img checks each master's format
AGENT_ENV_EXTRA=${TGT_CONTROL:+COWFLEET_TGT_CONTROL_PORT=$TGT_CONTROL}
. "$PROVISION_DIR/agent.sh"
if [ "$COWFLEET_START" = 1 ] && ! tgtadm ${TGT_CONTROL:+-C $TGT_CONTROL} --lld iscsi --op show --mode sys >/dev/null 2>&1; then
  if [ -d /run/systemd/system ] && [ -z "$TGT_CONTROL" ]; then
    systemctl enable -q --now tgt
  else
    setsid tgtd -f ${TGT_CONTROL:+-C $TGT_CONTROL} >> "$LOGDIR/tgtd.log" 2>&1 < /dev/null &
  fi
fi
start_role storage
