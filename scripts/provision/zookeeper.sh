#!/bin/sh
# Provision a ZooKeeper ensemble member: Debian's zookeeper, zoo.cfg, myid.
#   COWFLEET_ZK_ID       this member's id in COWFLEET_ZK_SERVERS (default: the id whose
#                        address is COWFLEET_ADDR)
#   COWFLEET_ZK_TICK_MS  tickTime (default 500: a dead member is noticed within seconds)
#   COWFLEET_ZK_HEAP     Java heap (default 256m)
# and the common parameters (common.sh).
. "$(dirname "$0")/common.sh"

install_packages zookeeper default-jre-headless
if [ -z "${COWFLEET_ZK_ID:-}" ]; then
  COWFLEET_ZK_ID=$(echo "$COWFLEET_ZK_SERVERS" | tr ',' '\n' | sed -n "s/^\([0-9]*\)=$COWFLEET_ADDR\$/\1/p")
fi
[ -n "$COWFLEET_ZK_ID" ] || die "$COWFLEET_ADDR is not in COWFLEET_ZK_SERVERS; set COWFLEET_ZK_ID"
DATA=$LIB/zookeeper
PEERS=$(echo "$COWFLEET_ZK_SERVERS" | tr ',' '\n' | sed 's/^\([0-9]*\)=\(.*\)$/server.\1=\2:2888:3888/')

write_node_env
mkdir -p "$DATA"
put_file "$DATA/myid" 0644 <<EOF
$COWFLEET_ZK_ID
EOF
put_file "$ETC/zookeeper/zoo.cfg" 0644 <<EOF
# written by scripts/provision/zookeeper.sh
tickTime=${COWFLEET_ZK_TICK_MS:-500}
initLimit=10
syncLimit=5
dataDir=$DATA
clientPort=$COWFLEET_ZK_PORT
clientPortAddress=$COWFLEET_ADDR
maxClientCnxns=0
admin.enableServer=false
4lw.commands.whitelist=ruok,srvr,mntr
minSessionTimeout=1000
maxSessionTimeout=20000
autopurge.purgeInterval=1
$PEERS
EOF
put_file "$ETC/zookeeper/log4j.properties" 0644 <<'EOF'
log4j.rootLogger=WARN, CONSOLE
log4j.appender.CONSOLE=org.apache.log4j.ConsoleAppender
log4j.appender.CONSOLE.layout=org.apache.log4j.PatternLayout
log4j.appender.CONSOLE.layout.ConversionPattern=%d %p %c{1}: %m%n
EOF
put_file "$ETC/zookeeper.env" 0644 <<EOF
ZOO_CFG=$ETC/zookeeper/zoo.cfg
ZOO_LOG4J=$ETC/zookeeper/log4j.properties
JAVA_HEAP=${COWFLEET_ZK_HEAP:-256m}
EOF
write_run zookeeper 'exec java -Xmx$JAVA_HEAP -XX:+UseSerialGC -Djava.net.preferIPv4Stack=true -Dlog4j.configuration=file:$ZOO_LOG4J \
  -Dzookeeper.jmx.log4j.disable=true -cp "/usr/share/java/zookeeper.jar:/usr/share/java/*" \
  org.apache.zookeeper.server.quorum.QuorumPeerMain "$ZOO_CFG"'
start_role zookeeper
