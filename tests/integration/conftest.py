"""Fixtures shared by integration test modules (tests/conftest.py has the lab's)."""
from __future__ import annotations

import shutil

import pytest

from tests.conftest import _workdir
from tests.integration.test_cli import run


@pytest.fixture(scope="module")
def module_dir(request):
    """A folder of the test module's own under /var/tmp (reachable by the
    daemons the tests start), removed after its last test."""
    d = _workdir(f"cowfleet-{request.module.__name__.rsplit('.', 1)[-1]}-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def cli(lab):
    """``cli(*args)``: the command line run as a user runs it (a subprocess)
    against the session's lab, with its admin token (test_cli.run)."""
    def call(*args, **kw):
        return run(*args, endpoint=lab.state.endpoint, token=lab.state.token, **kw)
    return call
