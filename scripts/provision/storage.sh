#!/bin/sh
# Provision a storage node: tgt (the iSCSI target) and the storage agent.
# Parameters: common.sh and agent.sh.
. "$(dirname "$0")/common.sh"
ROLE=storage
install_packages tgt
. "$PROVISION_DIR/agent.sh"
if [ "$COWFLEET_START" = 1 ] && ! tgtadm --lld iscsi --op show --mode sys >/dev/null 2>&1; then
  if [ -d /run/systemd/system ]; then
    systemctl enable -q --now tgt
  else
    setsid tgtd -f >> "$LOGDIR/tgtd.log" 2>&1 < /dev/null &
  fi
fi
start_role storage
