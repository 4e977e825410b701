#!/bin/sh
# Provision a control-service node: gunicorn serving the API on COWFLEET_ADDR.
#   COWFLEET_SERVICE_PORT     (default 8080)
#   COWFLEET_SERVICE_WORKERS  gunicorn workers (default 4)
#   COWFLEET_TOKENS_FILE      tokens file (default ROOT/etc/cowfleet/tokens, made once
#                             with an admin and a reader token if missing)
# and the common parameters (common.sh).
. "$(dirname "$0")/common.sh"

install_project
TOKENS=${COWFLEET_TOKENS_FILE:-$ETC/tokens}
write_node_env
write_secret
if [ ! -s "$TOKENS" ]; then
  mkdir -p "$(dirname "$TOKENS")"
  ( umask 077
    for role in admin reader; do
      echo "$(head -c 18 /dev/urandom | base64 | tr '+/' '-_') $role"
    done > "$TOKENS" )
  CHANGED=1
  say "made $TOKENS (an admin and a reader token)"
fi
chmod 0600 "$TOKENS"
put_file "$ETC/service.env" 0644 <<EOF
COWFLEET_ZK=$(zk_hosts)
COWFLEET_SECRET_FILE=$SECRET_FILE
COWFLEET_TOKENS_FILE=$TOKENS
COWFLEET_BIND=$COWFLEET_ADDR:${COWFLEET_SERVICE_PORT:-8080}
COWFLEET_WORKERS=${COWFLEET_SERVICE_WORKERS:-4}
COWFLEET_PYTHON=$COWFLEET_PYTHON
PROMETHEUS_MULTIPROC_DIR=$LIB/service/metrics
COWFLEET_ACCESS_LOG=$LOGDIR/access.log
EOF
write_run service 'rm -rf "$PROMETHEUS_MULTIPROC_DIR"; mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
exec "$COWFLEET_PYTHON" -m gunicorn --config python:cowfleet.service.gunicorn_conf \
  --bind "$COWFLEET_BIND" --workers "$COWFLEET_WORKERS" --access-logfile "$COWFLEET_ACCESS_LOG" \
  "cowfleet.service:create_app()"'
start_role service
