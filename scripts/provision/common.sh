# Node provisioning, the part every role shares. Sourced by zookeeper.sh,
# service.sh, storage.sh and compute.sh; POSIX sh.
#
# Parameters (environment variables, or KEY=VALUE arguments to the role script):
#   COWFLEET_NODE        node name (default: the short host name)
#   COWFLEET_RACK        the node's rack (agents)
#   COWFLEET_ADDR        the node's own address: daemons listen on it
#                        (default: the first address `hostname -I` prints)
#   COWFLEET_ZK_SERVERS  the ensemble as ID=ADDR,ID=ADDR,... (e.g. 1=10.77.0.11,2=10.77.0.12,3=10.77.0.13)
#   COWFLEET_ZK_CHROOT   ZooKeeper chroot of the cluster (default /cowfleet)
#   COWFLEET_ROOT        prefix for every file written (default: none, i.e. /); the
#                        network-namespace lab gives each node its own folder
#   COWFLEET_SRC         the project checkout (default: two folders above this script)
#   COWFLEET_PYTHON      a Python with cowfleet installed (default: $COWFLEET_SRC/.venv/bin/python)
#   COWFLEET_INSTALL     1: install Debian packages and the project (default 1)
#   COWFLEET_START       1: (re)start the daemon: a systemd unit where systemd runs,
#                        else a pid file (default 1); 0: configure only
#   COWFLEET_SECRET      the cluster secret (service and agents; the same on every node):
#                        written to etc/cowfleet/secret, mode 0600; may be left out
#                        when that file exists already (a second run)
#
# What it writes, under $COWFLEET_ROOT:
#   etc/cowfleet/node.env          NODE, RACK, ADDR, ZK (what testinfra reads)
#   etc/cowfleet/ROLE.env          the daemon's settings
#   etc/cowfleet/ROLE.run          the start command: `exec`s the daemon in the foreground
#   etc/cowfleet/secret            the cluster secret (0600; service and agents)
#   var/lib/cowfleet/...           state;  var/log/cowfleet/ROLE.log (when started here)
# Running a script twice changes nothing: files are rewritten only when their
# content differs, and a running daemon is restarted only then.
set -eu

for kv in "$@"; do
  case "$kv" in
    COWFLEET_*=*) export "$kv" ;;
    *) echo "provision: unknown argument '$kv' (use COWFLEET_NAME=VALUE)" >&2; exit 2 ;;
  esac
done

PROVISION_DIR=$(cd "$(dirname "$0")" && pwd)
COWFLEET_SRC=${COWFLEET_SRC:-$(cd "$PROVISION_DIR/../.." && pwd)}
COWFLEET_ROOT=${COWFLEET_ROOT:-}
COWFLEET_NODE=${COWFLEET_NODE:-$(hostname -s)}
COWFLEET_RACK=${COWFLEET_RACK:-}
COWFLEET_ADDR=${COWFLEET_ADDR:-$(hostname -I 2>/dev/null | awk '{print $1}')}
COWFLEET_ZK_SERVERS=${COWFLEET_ZK_SERVERS:-}
COWFLEET_ZK_CHROOT=${COWFLEET_ZK_CHROOT:-/cowfleet}
COWFLEET_ZK_PORT=${COWFLEET_ZK_PORT:-2181}
COWFLEET_INSTALL=${COWFLEET_INSTALL:-1}
COWFLEET_START=${COWFLEET_START:-1}
COWFLEET_PYTHON=${COWFLEET_PYTHON:-$COWFLEET_SRC/.venv/bin/python}

ETC=$COWFLEET_ROOT/etc/cowfleet
LIB=$COWFLEET_ROOT/var/lib/cowfleet
LOGDIR=$COWFLEET_ROOT/var/log/cowfleet
RUNDIR=$COWFLEET_ROOT/run/cowfleet
CHANGED=0

say() { echo "provision[$COWFLEET_NODE]: $*"; }
die() { echo "provision[$COWFLEET_NODE]: $*" >&2; exit 1; }

[ -n "$COWFLEET_ADDR" ] || die "no address: set COWFLEET_ADDR"

# The ZooKeeper connection string every client gets: all members, then the chroot.
zk_hosts() {
  [ -n "$COWFLEET_ZK_SERVERS" ] || die "set COWFLEET_ZK_SERVERS (ID=ADDR,...)"
  echo "$COWFLEET_ZK_SERVERS" | tr ',' '\n' | sed -n "s/^[0-9]*=\(.*\)$/\1:$COWFLEET_ZK_PORT/p" \
    | paste -sd, - | sed "s|\$|$COWFLEET_ZK_CHROOT|"
}

# install_packages PKG...: Debian packages, only those missing
install_packages() {
  [ "$COWFLEET_INSTALL" = 1 ] || return 0
  missing=""
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
  done
  [ -n "$missing" ] || return 0
  say "installing$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

# install_project: the project in a venv of its checkout (once)
install_project() {
  [ "$COWFLEET_INSTALL" = 1 ] || return 0
  install_packages python3 python3-venv python3-dev gcc pkg-config libvirt-dev
  if ! "$COWFLEET_PYTHON" -c 'import cowfleet' 2>/dev/null; then
    say "installing the project into $COWFLEET_SRC/.venv"
    python3 -m venv "$COWFLEET_SRC/.venv"
    "$COWFLEET_SRC/.venv/bin/pip" install -q -e "$COWFLEET_SRC"
    COWFLEET_PYTHON=$COWFLEET_SRC/.venv/bin/python
  fi
}

# put_file PATH MODE < content: write only when the content differs
put_file() {
  mkdir -p "$(dirname "$1")"
  tmp="$1.provision.$$"
  cat > "$tmp"
  if [ -f "$1" ] && cmp -s "$tmp" "$1"; then
    rm -f "$tmp"
    chmod "$2" "$1"
  else
    chmod "$2" "$tmp"
    mv "$tmp" "$1"
    CHANGED=1
    say "wrote $1"
  fi
}

# write_node_env ROLE: the facts about this node every role shares
write_node_env() {
  mkdir -p "$LIB" "$LOGDIR" "$RUNDIR"
  put_file "$ETC/node.env" 0644 <<EOF
COWFLEET_NODE=$COWFLEET_NODE
COWFLEET_RACK=$COWFLEET_RACK
COWFLEET_ADDR=$COWFLEET_ADDR
COWFLEET_ZK=$(zk_hosts)
EOF
}

# write_secret: the cluster secret in $SECRET_FILE, mode 0600 from its creation
# on: ZooKeeper's ACLs and the P2P signatures (docs/design.md, "A closed cluster")
SECRET_FILE=$ETC/secret
write_secret() {
  if [ -n "${COWFLEET_SECRET:-}" ]; then
    old_umask=$(umask)
    umask 077
    put_file "$SECRET_FILE" 0600 <<EOF
$COWFLEET_SECRET
EOF
    umask "$old_umask"
  elif [ ! -s "$SECRET_FILE" ]; then
    die "no cluster secret: set COWFLEET_SECRET (the same on every service and agent node)"
  fi
  chmod 0600 "$SECRET_FILE"
}

# write_run ROLE COMMAND: ROLE.run sources ROLE.env and execs COMMAND
write_run() {
  put_file "$ETC/$1.run" 0755 <<EOF
#!/bin/sh
# written by scripts/provision/$1.sh: starts the $1 daemon in the foreground
set -a
. "$ETC/$1.env"
set +a
$2
EOF
}

# real_host: this run configures the machine itself (a VM, a server), not a
# folder of it: no COWFLEET_ROOT prefix, and it installs or starts for real.
# The racks lab (COWFLEET_ROOT, COWFLEET_INSTALL=0, COWFLEET_START=0) runs
# these scripts on its own host: no host-wide setting may come from them there.
real_host() {
  [ -z "$COWFLEET_ROOT" ] && { [ "$COWFLEET_INSTALL" = 1 ] || [ "$COWFLEET_START" = 1 ]; }
}

# host_sysctl NAME VALUE FILE: a kernel setting kept in /etc/sysctl.d/FILE
# (so it survives a reboot) and applied now; on a real host only (real_host)
host_sysctl() {
  real_host || return 0
  changed=$CHANGED
  put_file "/etc/sysctl.d/$3" 0644 <<EOF
# written by scripts/provision: $1
$1 = $2
EOF
  CHANGED=$changed        # a kernel setting: no reason to restart the daemon
  sysctl -q -p "/etc/sysctl.d/$3" >/dev/null
  say "$1 = $(sysctl -n "$1")"
}

# start_role ROLE: under systemd a unit; without it a pid file; restarts only on change
start_role() {
  [ "$COWFLEET_START" = 1 ] || { say "configured $1 (not started: COWFLEET_START=0)"; return 0; }
  if [ -d /run/systemd/system ] && [ -z "$COWFLEET_ROOT" ]; then
    unit=/etc/systemd/system/cowfleet-$1.service
    put_file "$unit" 0644 <<EOF
[Unit]
Description=cowfleet $1
After=network-online.target
Wants=network-online.target

[Service]
ExecStart=$ETC/$1.run
Restart=always
RestartSec=2
KillMode=mixed

[Install]
WantedBy=multi-user.target
EOF
    systemctl daemon-reload
    systemctl enable -q "cowfleet-$1"
    if [ "$CHANGED" = 1 ]; then systemctl restart "cowfleet-$1"; else systemctl start "cowfleet-$1"; fi
    say "cowfleet-$1 active: $(systemctl is-active "cowfleet-$1")"
    return 0
  fi
  pidfile=$RUNDIR/$1.pid
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    [ "$CHANGED" = 1 ] || { say "$1 already running (pid $(cat "$pidfile"))"; return 0; }
    say "restarting $1: its configuration changed"
    kill -TERM -- "-$(cat "$pidfile")" 2>/dev/null || kill -TERM "$(cat "$pidfile")"
    i=0; while kill -0 "$(cat "$pidfile")" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
  fi
  setsid "$ETC/$1.run" >> "$LOGDIR/$1.log" 2>&1 < /dev/null &
  echo $! > "$pidfile"
  say "started $1 (pid $!, log $LOGDIR/$1.log)"
}
