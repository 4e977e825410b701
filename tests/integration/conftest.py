"""Fixtures shared by integration test modules (tests/conftest.py has the lab's)."""
from __future__ import annotations

import shutil

import pytest

from tests.conftest import _workdir, chrooted, zookeeper_alone
from tests.integration.test_cli import run


@pytest.fixture(scope="module")
def module_dir(request):
    """A folder of the test module's own under /var/tmp (reachable by the
    daemons the tests start), removed after its last test."""
    d = _workdir(f"cowfleet-{_module_name(request)}-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _module_name(request) -> str:
    return request.module.__name__.rsplit(".", 1)[-1]


@pytest.fixture(scope="module")
def zk_hosts(request):
    """The connection string of a ZooKeeper of the module's own, for tests
    of the coordination code without a lab (gone after the module)."""
    with zookeeper_alone(f"cowfleet-{_module_name(request)}-") as server:
        yield server.hosts


@pytest.fixture
def own_zk(zk_hosts, request):
    """A client of the module's own ZooKeeper under a chroot of the test's
    own, so no test sees another's znodes."""
    with chrooted(zk_hosts, request.node.name) as client:
        yield client


@pytest.fixture(scope="module")
def cli(lab):
    """``cli(*args)``: the command line run as a user runs it (a subprocess)
    against the session's lab, with its admin token (test_cli.run)."""
    def call(*args, **kw):
        return run(*args, endpoint=lab.state.endpoint, token=lab.state.token, **kw)
    return call
