# The agent part of storage.sh and compute.sh (sourced after common.sh, with ROLE set).
#   COWFLEET_AGENT_PORT  P2P endpoint port on COWFLEET_ADDR (default 7070)
#   COWFLEET_AGENT_ARGS  more cowfleet-agent arguments (e.g. --hypervisor fake --vcpus 8)
#   AGENT_ENV_EXTRA      (set by the role script) more lines for ROLE.env
[ -n "$COWFLEET_RACK" ] || die "set COWFLEET_RACK"
install_project
write_node_env
write_secret
mkdir -p "$LIB/$COWFLEET_NODE"
AGENT_ENV="COWFLEET_ZK=$(zk_hosts)
COWFLEET_SECRET_FILE=$SECRET_FILE
COWFLEET_PYTHON=$COWFLEET_PYTHON
AGENT_ARGS=\"--role $ROLE --rack $COWFLEET_RACK --name $COWFLEET_NODE --state-dir $LIB/$COWFLEET_NODE --listen $COWFLEET_ADDR:${COWFLEET_AGENT_PORT:-7070} ${COWFLEET_AGENT_ARGS:-}\""
[ -z "${AGENT_ENV_EXTRA:-}" ] || AGENT_ENV="$AGENT_ENV
$AGENT_ENV_EXTRA"
put_file "$ETC/$ROLE.env" 0644 <<EOF
$AGENT_ENV
EOF
write_run "$ROLE" 'exec "$COWFLEET_PYTHON" -m cowfleet.agents.main --zk "$COWFLEET_ZK" $AGENT_ARGS'
