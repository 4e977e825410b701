"""One contract, two exporters: the tgtd one (a real tgtd of this test's own,
on its own management channel and portal) and the fake one the racks lab's
``--fake`` runs must export, list, unexport and report their health alike."""
from __future__ import annotations

import os
import secrets
import signal
import socket
from dataclasses import dataclass
from typing import Callable

import pytest

from cowfleet.agents.storage.exporter import ExportError, Exporter, FakeExporter, FakeMachine, iqn_for
from cowfleet.agents.storage.tgt import TgtExporter
from cowfleet.lab import components as c

pytestmark = pytest.mark.integration

NODE = f"extest-{secrets.token_hex(3)}"
SHA = "0123456789ab" + "0" * 52


@dataclass
class Backend:
    exporter: Exporter
    neighbour: Exporter            # another node's exporter on the same tgtd
    kill: Callable[[], None]       # the tgtd dies (its targets with it)
    revive: Callable[[], None]


@pytest.fixture(scope="module")
def tgtd(module_dir):
    """A tgtd of this module's own (channel, portal), so the machine's is never touched."""
    channel = c.free_tgt_control_port(170)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        portal = f"127.0.0.1:{s.getsockname()[1]}"
    state = {"pid": c.ensure_tgtd(module_dir / "tgtd.log", control_port=channel, portal=portal)}
    saved = os.environ.get("COWFLEET_TGT_CONTROL_PORT")
    os.environ["COWFLEET_TGT_CONTROL_PORT"] = str(channel)     # what tgtadm talks to

    def kill():
        os.kill(state["pid"], signal.SIGKILL)
        c.wait_gone(state["pid"], 10)

    def revive():
        state["pid"] = c.ensure_tgtd(module_dir / "tgtd.log", control_port=channel, portal=portal)
    try:
        yield kill, revive
    finally:
        if saved is None:
            os.environ.pop("COWFLEET_TGT_CONTROL_PORT", None)
        else:
            os.environ["COWFLEET_TGT_CONTROL_PORT"] = saved
        if state["pid"] and c.tgtd_running(channel):
            c.stop_tgtd(state["pid"], control_port=channel)


@pytest.fixture(params=["tgt", "fake"])
def backend(request, module_dir):
    if request.param == "fake":
        machine = FakeMachine()
        b = Backend(FakeExporter(NODE, machine), FakeExporter(NODE + "-n", machine), machine.stop, machine.start)
    else:
        kill, revive = request.getfixturevalue("tgtd")
        b = Backend(TgtExporter(NODE), TgtExporter(NODE + "-n"), kill, revive)
    yield b
    for ex in (b.exporter, b.neighbour):          # whatever a failing test left
        try:
            for iqn in ex.list():
                ex.unexport(iqn)
        except ExportError:
            pass


@pytest.fixture
def masters(module_dir):
    made = []

    def make(name: str) -> str:
        path = module_dir / f"{name}-{secrets.token_hex(3)}.img"
        path.write_bytes(bytes(1 << 20))
        os.chmod(path, 0o444)
        made.append(path)
        return str(path)
    yield make
    for p in made:
        p.unlink(missing_ok=True)


def test_targets_are_named_by_node_image_and_content(backend):
    assert backend.exporter.target_name("demo", SHA) == iqn_for(NODE, "demo", SHA) \
        == f"iqn.2026-11.org.cowfleet:{NODE}:demo-0123456789ab"


def test_export_list_unexport(backend, masters):
    ex = backend.exporter
    a, b = masters("a"), masters("b")
    iqn = ex.target_name("a", SHA)
    assert ex.list() == {}
    ex.export(iqn, a)
    assert ex.list() == {iqn: [a]}
    ex.export(iqn, a)                          # again: nothing changes
    assert ex.list() == {iqn: [a]}
    ex.export(iqn, b)                          # another file under that name: replaced
    assert ex.list() == {iqn: [b]}
    assert ex.unexport(iqn) is True
    assert ex.list() == {}
    assert ex.unexport(iqn) is False


def test_a_node_sees_only_its_own_targets(backend, masters):
    mine, theirs = backend.exporter, backend.neighbour
    a, b = masters("a"), masters("b")
    my_iqn, their_iqn = mine.target_name("img", SHA), theirs.target_name("img", SHA)
    mine.export(my_iqn, a)
    theirs.export(their_iqn, b)
    assert mine.list() == {my_iqn: [a]}
    assert theirs.list() == {their_iqn: [b]}
    assert mine.unexport(my_iqn) and theirs.list() == {their_iqn: [b]}
    assert theirs.unexport(their_iqn)


def test_a_missing_master_is_refused_and_leaves_no_target(backend, masters, module_dir):
    ex = backend.exporter
    iqn = ex.target_name("gone", SHA)
    with pytest.raises(ExportError):
        ex.export(iqn, str(module_dir / "no-such-master.img"))
    assert ex.list() == {}
    ex.export(iqn, masters("gone"))
    with pytest.raises(ExportError):           # replacing it by a missing file: none left either
        ex.export(iqn, str(module_dir / "no-such-master.img"))
    assert ex.list() == {}


def test_a_dead_exporter_fails_every_call_and_comes_back_empty(backend, masters):
    ex = backend.exporter
    a = masters("a")
    iqn = ex.target_name("a", SHA)
    ex.export(iqn, a)
    ex.check()
    backend.kill()
    try:
        for call in (ex.check, ex.list, lambda: ex.export(iqn, a), lambda: ex.unexport(iqn)):
            with pytest.raises(ExportError):
                call()
    finally:
        backend.revive()
    ex.check()
    assert ex.list() == {}                     # its targets went with it; the agent exports them again
    ex.export(iqn, a)
    assert ex.list() == {iqn: [a]}
