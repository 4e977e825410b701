#!/bin/sh
# The demo over plain HTTP: an image and a group of 3, then wait until ready.
# Needs COWFLEET_ENDPOINT and COWFLEET_TOKEN (printed by `cowfleet lab up`) and
# a demo image (`cowfleet image build-demo /var/cache/cowfleet/demo.raw`).
set -eu
: "${COWFLEET_ENDPOINT:?}" "${COWFLEET_TOKEN:?}"
IMAGE=${IMAGE:-/var/cache/cowfleet/demo.raw}
api() { curl -sS -H "Authorization: Bearer $COWFLEET_TOKEN" -H 'Content-Type: application/json' "$@"; }

api -X PUT -d "{\"source_url\": \"file://$IMAGE\", \"format\": \"raw\", \"min_replicas\": 1}" \
    "$COWFLEET_ENDPOINT/v1/images/demo"; echo
api -X PUT -d '{"image": "demo", "flavor": "small", "size": 3}' \
    "$COWFLEET_ENDPOINT/v1/instance-groups/web"; echo
until api "$COWFLEET_ENDPOINT/v1/instance-groups/web" | grep -q '"phase": *"ready"'; do
  api "$COWFLEET_ENDPOINT/v1/instance-groups/web" | python3 -c \
    'import json,sys; s=json.load(sys.stdin)["status"]; print(s["phase"], s["ready"], "ready")'
  sleep 1
done
echo "group web is ready"; echo "delete it: curl -X DELETE -H \"Authorization: Bearer \$COWFLEET_TOKEN\" $COWFLEET_ENDPOINT/v1/instance-groups/web"
