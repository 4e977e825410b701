"""One name rule, one sha256 rule and one set of spec defaults, read by every
component (cowfleet.names, cowfleet.checksum, cowfleet.defaults)."""
from __future__ import annotations

import hashlib
import logging

import pytest
from werkzeug.exceptions import NotFound

from cowfleet import defaults
from cowfleet.agents.main import main as agent_main
from cowfleet.agents.p2p_server import P2PServer
from cowfleet.agents.storage.data_server import DataServer
from cowfleet.checksum import SHA256_RE, file_sha256, is_sha256
from cowfleet.models import Group, Image
from cowfleet.names import valid_name
from cowfleet.protocol import image_data_path
from cowfleet.provider import resources
from cowfleet.specs import GroupSpecSchema
from cowfleet.specs import ImageSpecSchema


@pytest.mark.parametrize("name", ["a", "web-1", "x" * 63, "0abc"])
def test_valid_names(name):
    assert valid_name(name)


@pytest.mark.parametrize("name", ["", "web-", "-web", "Web", "a_b", "x" * 64, "web\n", "a.b", None])
def test_invalid_names(name):
    assert not valid_name(name)


def test_the_agent_refuses_a_name_the_api_refuses(capsys):
    assert agent_main(["--role", "storage", "--rack", "r1", "--zk", "127.0.0.1:1", "--name", "node-"]) == 2
    assert "invalid node name 'node-'" in capsys.readouterr().err


def test_sha256_rule():
    digest = "ab" * 32
    assert is_sha256(digest) and is_sha256(digest.upper())
    assert SHA256_RE.match(digest) and not SHA256_RE.match(digest.upper())
    assert not is_sha256(digest[:-1]) and not is_sha256(digest + "\n") and not is_sha256(None)


def test_file_sha256(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"abc" * 100_000)
    assert file_sha256(path, chunk=4096) == hashlib.sha256(b"abc" * 100_000).hexdigest()


def test_every_component_fills_the_same_defaults():
    image = ImageSpecSchema().load({})
    assert image["min_replicas"] == Image("x").min_replicas == defaults.MIN_REPLICAS
    assert resources.Image.defaults["min_replicas"] == defaults.MIN_REPLICAS
    group = GroupSpecSchema().load({"image": "i", "flavor": "f", "size": 1})
    model = Group("g", image="i", flavor="f", size=1)
    assert group["placement"] == model.placement == defaults.placement()
    assert group["update_policy"] == model.update_policy == defaults.update_policy()
    assert resources.PLACEMENT_DEFAULT == defaults.placement()
    assert resources.UPDATE_POLICY_DEFAULT == defaults.update_policy()


def test_defaults_are_fresh_each_time():
    a, b = Group("a", image="i", flavor="f", size=1), Group("b", image="i", flavor="f", size=1)
    a.placement["strategy"] = "pack"
    assert b.placement["strategy"] == defaults.STRATEGY


def test_the_image_data_route_takes_api_names_only():
    server = P2PServer(logging.getLogger("test"))
    data = DataServer("storage", None, None, None, None)
    data.add_routes(server)
    urls = server.map.bind("storage")

    def matches(path: str) -> bool:
        try:
            return urls.match(path, method="GET") == (data.respond, {"name": "web-1"})
        except NotFound:
            return False
    assert matches(image_data_path("web-1"))
    for bad in ("web-", "-web", "Web", "a.b", "x" * 64):
        assert not matches(image_data_path(bad)), bad
    assert not matches(image_data_path("web-1") + "\n")


def test_every_variable_the_agent_reads_is_in_its_help(capsys):
    """cowfleet-agent --help lists each COWFLEET_* variable read under agents/
    (and by the fault points every agent passes)."""
    import re
    from pathlib import Path

    from cowfleet.agents.main import parse_args
    from cowfleet.config import AGENT_ENVIRONMENT
    root = Path(__file__).resolve().parents[2]
    sources = [*(root / "agents").rglob("*.py"), root / "cowfleet" / "faults.py"]
    read = {m for f in sources for m in re.findall(r'"(COWFLEET_[A-Z_]+)"', f.read_text())}
    assert read and read <= set(AGENT_ENVIRONMENT), sorted(read - set(AGENT_ENVIRONMENT))
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in AGENT_ENVIRONMENT)
