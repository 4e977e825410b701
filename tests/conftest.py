"""Fixtures: real ZooKeeper, libvirtd, tgtd, gunicorn and agents (the lab)."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from cowfleet import faults
from cowfleet.config import SECRET_FILE_VAR, write_secret
from cowfleet.lab import components as c
from tests.helpers import wait_until


# Each layer's own time limit (pytest-timeout), well above its slowest test
# here and below the next layer's: a hang fails its test with the tail of the
# logs (below) instead of stalling the run.
LAYER_TIMEOUTS = {"unit": 60, "integration": 420, "lab": 480, "terraform": 600}
LOG_TAIL_LINES = 40


def pytest_configure(config):
    """A test session runs closed clusters, as provisioned ones are: one
    cluster secret for the session (unless the environment names one), which
    the labs take over, and which every ZooKeeper client and P2P call of the
    tests and of the agents and services they start in process use."""
    if not os.environ.get(SECRET_FILE_VAR):
        d = Path(tempfile.mkdtemp(prefix="cowfleet-secret-", dir="/var/tmp"))
        os.environ[SECRET_FILE_VAR] = str(write_secret(d / "secret"))
        config._cowfleet_secret_dir = d


def pytest_unconfigure(config):
    d = getattr(config, "_cowfleet_secret_dir", None)
    if d is not None:
        shutil.rmtree(d, ignore_errors=True)
        os.environ.pop(SECRET_FILE_VAR, None)


def pytest_collection_modifyitems(config, items):
    for item in items:
        layer = Path(str(item.fspath)).parent.name
        if layer in LAYER_TIMEOUTS and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(LAYER_TIMEOUTS[layer]))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test that used a lab gets the tail of that lab's logs (agents,
    service, ZooKeeper) in its report: the failure explains itself."""
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    for name, value in getattr(item, "funcargs", {}).items():
        folder = getattr(value, "dir", None)
        if not isinstance(folder, Path) or not folder.is_dir():
            continue
        logs = sorted((p for p in folder.rglob("*.log") if p.is_file()), key=lambda p: p.stat().st_mtime)[-8:]
        for log in logs:
            try:
                tail = log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
            except OSError:
                continue
            report.sections.append((f"{name}: {log.relative_to(folder)} (last {len(tail)} lines)",
                                    "\n".join(tail)))


def pytest_sessionfinish(session, exitstatus):
    """In CI (.ci/run sets COWFLEET_NO_SKIPS) every component is installed:
    a test that skips there hides a missing install step, so it fails the
    run. The skips in tests/lab fire only against a Vagrant lab."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if os.environ.get("COWFLEET_NO_SKIPS") and skipped and exitstatus == 0:
        for report in skipped:
            reporter.write_line(f"skipped in CI, which installs everything: {report.nodeid} {report.longrepr}")
        session.exitstatus = 1


def _workdir(prefix: str) -> Path:
    # /tmp, not pytest's tmp_path under /root: qemu runs as an unprivileged
    # user and must reach overlays and masters
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    os.chmod(d, 0o755)
    return d


@contextlib.contextmanager
def zookeeper_alone(prefix: str):
    """A ZooKeeper of its own in a folder of its own (both gone afterwards),
    for tests of the coordination code alone."""
    d = _workdir(prefix)
    server = c.ZooKeeperServer(d / "zk")
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def chrooted(hosts: str, name: str):
    """A client of ``hosts`` under a chroot of its own (e.g. the test's name)."""
    from cowfleet.zk.connection import connect
    client = connect(hosts + "/" + name[:40])
    try:
        yield client
    finally:
        client.stop()
        client.close()


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
    # the agents' fault points (cowfleet/faults.py) answer to this file; crash
    # tests write it to stop an agent at one step (absent: no effect)
    the_lab.fault_pause = d / "fault-pause"
    # (set for the whole session: agents the tests restart inherit it)
    saved = os.environ.get(faults.PAUSE)
    os.environ[faults.PAUSE] = str(the_lab.fault_pause)
    the_lab.up()
    yield the_lab
    if saved is None:
        os.environ.pop(faults.PAUSE, None)
    else:
        os.environ[faults.PAUSE] = saved
    the_lab.down()
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def client(lab):
    from cowfleet.client import Client
    # no retry of a 502/503/504: an error a user would see fails the test
    return Client(lab.state.endpoint, lab.state.token, retries=1, retry_status=False)


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


@pytest.fixture(scope="module")
def never_boots(client, image_demo):
    """Image 'cond-zeros': a disk of zeros, which no firmware boots (the
    guest never prints its readiness line)."""
    d = Path(tempfile.mkdtemp(prefix="cowfleet-cond-", dir="/var/tmp"))
    os.chmod(d, 0o755)
    zeros = d / "zeros.raw"
    zeros.write_bytes(bytes(1 << 20))
    try:
        client.put_image("cond-zeros", source_url=f"file://{zeros}", format="raw", min_replicas=1)
        wait_until(lambda: client.get_image("cond-zeros")["status"] == "available", 60, "image cond-zeros")
        yield "cond-zeros"
    finally:
        client.delete_image("cond-zeros")
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def own_groups(client):
    """Names of groups a test makes: whatever becomes of the test, they are
    deleted afterwards (and waited for), so one failure leaks nothing into
    the tests after it."""
    from cowfleet.client import ApiError
    names: list[str] = []
    yield names
    for name in names:
        try:
            client.delete_group(name)
        except ApiError:
            continue
    for name in names:
        wait_until(lambda: client.get_group(name) is None, 180, f"group {name} deleted after the test")
