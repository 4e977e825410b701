"""gunicorn settings for the control service (``--config python:cowfleet.service.gunicorn_conf``)."""
import os

from prometheus_client import multiprocess

worker_class = "gthread"
threads = 4
timeout = 60
# idle keep-alive connections stay open 75 s (gunicorn's default is 2 s): a
# client polling every second or two would otherwise often reuse a connection
# the server is closing at that moment and see it dropped
keepalive = 75


def child_exit(server, worker):
    # a dead worker's metric files must stop counting towards live gauges
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(worker.pid)
