"""Prometheus metrics (prometheus_client).

Request counts and latencies are per process; under gunicorn set
``PROMETHEUS_MULTIPROC_DIR`` (the lab and ``cowfleet serve`` do) so that a
scrape sums every worker. Group and instance counts come from ZooKeeper at
scrape time, so any worker reports the same truth.
"""
from __future__ import annotations

import os
import time

from flask import Response, g, request
from prometheus_client import (CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram,
                               generate_latest, multiprocess)
from prometheus_client.core import GaugeMetricFamily

from cowfleet.models import Group, Instance, InstanceState
from cowfleet.zk import layout
from cowfleet.zk.connection import read_children

REQUESTS = Counter("cowfleet_http_requests_total", "HTTP requests answered",
                   ["method", "endpoint", "status"])
LATENCY = Histogram("cowfleet_http_request_duration_seconds", "HTTP request latency",
                    ["method", "endpoint"],
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))


class ClusterCollector:
    """Group count, desired instances and instances by state, from the worker's mirror of ZooKeeper."""

    def __init__(self, zk_getter):
        self.zk_getter = zk_getter

    def collect(self):
        groups = GaugeMetricFamily("cowfleet_instance_groups", "Instance groups")
        desired = GaugeMetricFamily("cowfleet_instances_desired", "Sum of group sizes")
        by_state = GaugeMetricFamily("cowfleet_instances", "Instances by state", labels=["state"])
        try:
            zk = self.zk_getter()
            counts = {s: 0 for s in InstanceState.ALL}
            all_groups = read_children(zk, layout.GROUPS, Group)
            for group, _ in all_groups:
                for inst, _ in read_children(zk, layout.group_instances(group.name), Instance):
                    counts[inst.state] = counts.get(inst.state, 0) + 1
        except Exception:
            return
        groups.add_metric([], len(all_groups))
        desired.add_metric([], sum(gr.size for gr, _ in all_groups if not gr.deleting))
        for state, n in sorted(counts.items()):
            by_state.add_metric([state], n)
        yield groups
        yield desired
        yield by_state


def install(app, zk_getter) -> None:
    cluster = ClusterCollector(zk_getter)

    @app.before_request
    def _start_timer():
        g.started = time.perf_counter()

    @app.after_request
    def _observe(resp):
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        if endpoint != "/metrics":
            REQUESTS.labels(request.method, endpoint, str(resp.status_code)).inc()
            LATENCY.labels(request.method, endpoint).observe(
                time.perf_counter() - g.get("started", time.perf_counter()))
        return resp

    @app.get("/metrics")
    def metrics():
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        else:
            registry = REGISTRY
        text = generate_latest(registry)
        extra = CollectorRegistry()
        extra.register(cluster)
        text += generate_latest(extra)
        return Response(text, content_type=CONTENT_TYPE_LATEST)   # it names its charset already
