"""gunicorn settings for the control service (``--config python:cowfleet.service.gunicorn_conf``)."""
import os

worker_class = "gthread"
threads = 4
timeout = 60


def child_exit(server, worker):
    # a dead worker's metric files must stop counting towards live gauges
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess
        multiprocess.mark_process_dead(worker.pid)
