"""The command line's pieces without a service: tables, flags to a spec,
one-line errors (the end-to-end runs are tests/integration/test_cli.py)."""
from __future__ import annotations

import click
import pytest

from cowfleet.cli import main
from cowfleet.cli.common import labels_arg, table
from cowfleet.cli.groups import spec_from
from cowfleet.cli.tokens import _duration
from cowfleet.client import ApiError, ConfigError, load_config

pytestmark = pytest.mark.timeout(20, func_only=True)


def test_table_columns_fit_their_data():
    out = table(["NAME", "SIZE", "NOTE"], [["a-very-long-name", 5, "x"], ["b", 12345, None]], right=("SIZE",))
    lines = out.splitlines()
    assert lines == ["NAME               SIZE  NOTE",
                     "a-very-long-name      5  x",
                     "b                 12345  -"]


def test_labels_and_removals():
    assert labels_arg(["a=1", "b=x=y", "c="]) == {"a": "1", "b": "x=y", "c": ""}
    assert labels_arg(["a-", "b=2"], allow_removal=True) == {"a": None, "b": "2"}
    for bad in (["nokey"], ["=v"], ["a-"]):
        with pytest.raises(click.BadParameter):
            labels_arg(bad)


def test_flags_make_a_spec_or_a_merge_patch(tmp_path):
    ud = tmp_path / "ud"
    ud.write_text("#cloud-config\n")
    keys = tmp_path / "keys"
    keys.write_text("ssh-ed25519 AAAA one\n# comment\n\nssh-ed25519 BBBB two\n")
    opts = dict(image="demo", flavor="small", size=3, strategy="pack", max_per_node=None,
                user_data=f"@{ud}", ssh_keys=(f"@{keys}", "ssh-rsa CCCC three"), labels=("tier=web",),
                max_unavailable=0, max_surge=None, persistent=None)
    assert spec_from(opts, patch=False) == {
        "image": "demo", "flavor": "small", "size": 3, "placement": {"strategy": "pack"},
        "update_policy": {"max_unavailable": 0}, "user_data": "#cloud-config\n",
        "ssh_authorized_keys": ["ssh-ed25519 AAAA one", "ssh-ed25519 BBBB two", "ssh-rsa CCCC three"],
        "labels": {"tier": "web"}}
    only = {k: None for k in opts} | {"labels": ("tier-",), "ssh_keys": ()}
    assert spec_from(only, patch=True) == {"labels": {"tier": None}}
    assert spec_from({k: None for k in opts} | {"start": "clone"}, patch=True) == {"start": "clone"}


def test_durations():
    assert [_duration(v) for v in ("90", "90s", "15m", "12h", "30d", "2w")] == \
        [90, 90, 900, 43200, 2592000, 1209600]
    for bad in ("0", "soon", "-5", "1y", "1.5h"):
        with pytest.raises(click.BadParameter):
            _duration(bad)


def test_api_errors_are_one_line_with_the_fields_said_once():
    err = ApiError(422, {"detail": "the request body is not valid",
                         "errors": {"placement": {"strategy": ["Must be one of: spread, pack."]}, "size": ["bad"]}})
    assert str(err) == ("422 the request body is not valid "
                        "(placement.strategy: Must be one of: spread, pack.; size: bad)")
    same = ApiError(422, {"detail": "the data is raw,\nnot qcow2", "errors": {"format": ["the data is raw,\nnot qcow2"]}})
    assert str(same) == "422 the data is raw, not qcow2"


@pytest.mark.parametrize("endpoint", ["127.0.0.1:8080", "ftp://x", "http://", "localhost"])
def test_an_endpoint_must_be_an_http_url(endpoint):
    with pytest.raises(ConfigError, match="http://"):
        load_config(endpoint, "token")


def test_main_never_raises_and_says_one_line(capsys, monkeypatch):
    monkeypatch.setenv("COWFLEET_ENDPOINT", "nohttp:8080")
    monkeypatch.setenv("COWFLEET_TOKEN", "x")
    assert main(["group", "list"]) == 1
    assert main(["group", "frobnicate"]) == 2
    assert main(["--version"]) == 0
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("cowfleet: ") for line in lines)
    assert "nohttp:8080" in lines[0] and "frobnicate" in lines[1]
    assert out.startswith("cowfleet ")


def test_a_bad_endpoint_on_the_command_line_is_a_usage_error(capsys):
    # from the environment it is a setting that does not work (1, above);
    # given as --endpoint, a bad command line (2)
    assert main(["--endpoint", "notaurl", "--token", "x", "group", "list"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cowfleet: ") and "'notaurl'" in err[0]


def test_the_progress_bar_stays_its_width_while_a_scale_in_has_extra_ready():
    from cowfleet.cli.groups import _bar
    assert _bar(2, 1) == "[" + "#" * 20 + "]" and _bar(1, 2) == "[" + "#" * 10 + "." * 10 + "]"
    assert _bar(0, 0) == "[" + "#" * 20 + "]"


def test_help_lists_every_environment_variable_the_cli_reads(capsys):
    import pathlib
    import re
    from cowfleet.config import CLI_ENVIRONMENT
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for var in CLI_ENVIRONMENT:
        assert re.search(rf"^\s+{var}\s+\S", out, re.M), var
    # and the list is whole: every COWFLEET_* variable the CLI's own modules,
    # the client and the image builders read is in it
    root = pathlib.Path(__file__).resolve().parents[2] / "cowfleet"
    read = set()
    for path in [*root.glob("cli/*.py"), root / "client.py", root / "config.py", *root.glob("guest/*.py")]:
        read |= set(re.findall(r"""(?:environ\.get|getenv|setting)\(\s*["'](COWFLEET_[A-Z_]+)""",
                               path.read_text()))
    assert read and read <= set(CLI_ENVIRONMENT), read - set(CLI_ENVIRONMENT)


def test_the_lab_down_hint_names_a_lab_folder_that_is_not_the_default(monkeypatch, tmp_path):
    from cowfleet.cli.lab import down_command
    from cowfleet.config import LAB_DIR_DEFAULT
    monkeypatch.delenv("COWFLEET_LAB_DIR", raising=False)
    assert down_command(LAB_DIR_DEFAULT) == "cowfleet lab down"
    assert down_command("/var/tmp/trial/lab") == "cowfleet lab down --dir /var/tmp/trial/lab"
    # relative: made absolute; a space: quoted; the default while $COWFLEET_LAB_DIR points elsewhere: named
    monkeypatch.chdir(tmp_path)
    assert down_command("my lab") == f"cowfleet lab down --dir '{tmp_path / 'my lab'}'"
    monkeypatch.setenv("COWFLEET_LAB_DIR", "/x")
    assert down_command(LAB_DIR_DEFAULT) == f"cowfleet lab down --dir {LAB_DIR_DEFAULT}"


def test_apply_wait_shows_every_group_and_one_error_line_for_the_failed(tmp_path, capsys, monkeypatch):
    import json as json_
    import cowfleet.cli.groups as groups

    def group(name, failed):
        return {"name": name, "size": 1, "generation": 1, "instances": [],
                "status": {"ready": 0 if failed else 1, "failed": int(failed), "phase": "degraded" if failed
                           else "ready", "message": "", "conditions": [
                               {"type": "Ready", "status": "False", "reason": "InstancesFailed",
                                "message": f"{name} broke"}] if failed else []}}

    class Stub:
        def get_group(self, name):
            return None

        def put_group(self, name, **spec):
            return group(name, False)

    monkeypatch.setattr(groups, "client", lambda: Stub())
    monkeypatch.setattr(groups, "watch_group", lambda cl, name, timeout, generation=None: dict(
        group(name, name == "a"), _elapsed=1.0, _all_running=1.0))
    f = tmp_path / "groups.json"
    f.write_text(json_.dumps([{"name": n, "image": "demo", "flavor": "small", "size": 1} for n in "ab"]))
    assert main(["group", "apply", "-f", str(f), "--wait", "-o", "json"]) == 1
    out, err = capsys.readouterr()
    assert '"name": "a"' in out and '"name": "b"' in out        # b waited for and shown too
    errors = [line for line in err.splitlines() if line.startswith("cowfleet: ")]
    assert errors == ["cowfleet: instance group a: 1 failed: InstancesFailed: a broke"]
