"""Fixtures: real ZooKeeper, libvirtd, tgtd, gunicorn and agents (the lab)."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from cowfleet.lab import components as c
from tests.helpers import wait_until


def _workdir(prefix: str) -> Path:
    # /tmp, not pytest's tmp_path under /root: qemu runs as an unprivileged
    # user and must reach overlays and masters
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    os.chmod(d, 0o755)
    return d


@pytest.fixture(scope="session")
def libvirtd():
    started = c.ensure_libvirtd()
    yield
    if started:
        c.stop_libvirtd()


@pytest.fixture(scope="session")
def demo_image():
    from cowfleet.guest.builder import build_demo_image
    d = _workdir("cowfleet-img-")
    path = build_demo_image(d / "demo.raw")
    yield path
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def lab(libvirtd):
    from cowfleet.lab.lab import Lab
    d = _workdir("cowfleet-lab-")
    the_lab = Lab(d / "lab")
    the_lab.up()
    yield the_lab
    the_lab.down()
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def client(lab):
    from cowfleet.client import Client
    return Client(lab.state.endpoint, lab.state.token)


@pytest.fixture
def zk(lab):
    from cowfleet.zk.connection import connect
    client = connect(lab.state.zk)
    yield client
    client.stop()
    client.close()


@pytest.fixture(scope="session")
def image_demo(client, demo_image):
    """Image 'demo' registered and available in the session lab."""
    client.put_image("demo", source_url=f"file://{demo_image}", format="raw", min_replicas=1)
    wait_until(lambda: client.get_image("demo")["status"] == "available", 60, "image demo available")
    return client.get_image("demo")
