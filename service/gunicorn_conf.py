"""gunicorn settings for the control service (``--config python:cowfleet.service.gunicorn_conf``)."""
import os

from gunicorn import util
from prometheus_client import multiprocess

from cowfleet.service.problems import server_error_bytes

worker_class = "gthread"
threads = 4
timeout = 60
# idle keep-alive connections stay open 75 s (gunicorn's default is 2 s): a
# client polling every second or two would otherwise often reuse a connection
# the server is closing at that moment and see it dropped
keepalive = 75

# What a request may be before the app sees it (gunicorn's defaults, written
# out because README documents them): a longer request line is 414, more
# header fields or a longer one 431 -- answered by gunicorn itself, as
# problem+json (below). The app's own limits (JSON bodies 1 MiB, lists 1000,
# labels 64, uploads per worker) answer problem+json from the app.
limit_request_line = 4094
limit_request_fields = 100
limit_request_field_size = 8190


def _write_problem(sock, status_int, reason, mesg):
    util.write_nonblock(sock, server_error_bytes(status_int, reason, mesg))


# gunicorn writes the errors it answers itself (the limits above, a request
# it cannot parse) with util.write_error, a fixed text/html page; it has no
# setting or hook for that page, so its writer is replaced (same signature,
# called only from Worker.handle_error). Workers are forked from this
# process, so they inherit it.
util.write_error = _write_problem


def child_exit(server, worker):
    # a dead worker's metric files must stop counting towards live gauges
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(worker.pid)
