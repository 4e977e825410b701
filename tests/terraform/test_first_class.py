"""The provider behaves like a first-class one (issue 14), with the real
Terraform binary against the session lab: values the API refuses are
diagnostics at plan, no takeovers of objects made elsewhere, built-in
flavors refused at plan, defaults that follow the configuration. Flavors and
groups of size 0 only: no VM boots here.
"""
from __future__ import annotations

import json

import pytest

from tests.terraform.test_terraform import HEAD

pytestmark = pytest.mark.integration

INVALID = HEAD + """variable "size" {}
variable "strategy" {}
variable "start" {}
variable "vcpus" {}
resource "cowfleet_flavor" "f" {
  name       = "tfinvalid"
  vcpus      = var.vcpus
  memory_mib = 64
}
resource "cowfleet_instance_group" "bad" {
  name   = "tfinvalid"
  image  = "demo"
  flavor = "small"
  size   = var.size
  start  = var.start
  labels = { %(label)s = "x" }
  placement {
    strategy = var.strategy
  }
  timeouts {
    create = "2m"
  }
}
"""


def test_values_the_api_refuses_are_diagnostics_at_plan(make_tf, client):
    """The service's own schemas judge every known value at validate and at
    plan, on the attribute's line, before anything is written; a value not
    known yet (a variable at validate time) is left for later."""
    tf = make_tf()
    tf.write(INVALID % {"label": '"bad key"'})
    tf.init()
    proc = tf.run("validate", "-no-color", ok=(1,))
    assert 'Error: Invalid labels["bad key"]' in proc.stderr and "a label key is" in proc.stderr, proc.stderr
    assert "Invalid size" not in proc.stderr and "Invalid vcpus" not in proc.stderr   # variables: unknown
    tf.write(INVALID % {"label": "tier"})
    code, text = tf.plan_exitcode("-var=size=-4", "-var=strategy=spred", "-var=vcpus=0", "-var=start=warm")
    assert code == 1, text
    flat = " ".join(text.split())
    for summary, line, message in [
            ("Invalid size", "size = var.size", "greater than or equal to 0"),
            ("Invalid start", "start = var.start", "Must be one of: auto, clone, boot."),
            ("Invalid placement.strategy", "strategy = var.strategy", "Must be one of: spread, pack."),
            ("Invalid vcpus", "vcpus = var.vcpus", "greater than or equal to 1")]:
        assert f"Error: {summary}" in flat and line in flat and message in flat, (summary, text)
    assert client.get_flavor("tfinvalid") is None and client.get_group("tfinvalid") is None
    # the same configuration with values the API takes plans the two creates
    code, text = tf.plan_exitcode("-var=size=0", "-var=strategy=pack", "-var=vcpus=1", "-var=start=clone")
    assert code == 2 and "2 to add" in text, text
    assert tf.run("state", "list", ok=(0, 1)).stdout.strip() == ""


TAKEN = HEAD + """resource "cowfleet_flavor" "mine" {
  name       = "tftaken"
  vcpus      = 2
  memory_mib = 256
}
resource "cowfleet_instance_group" "mine" {
  name   = "tftakengrp"
  image  = "demo"
  flavor = "small"
  size   = 0
}
"""


def test_a_create_refuses_an_object_made_elsewhere_and_says_how_to_import_it(make_tf, client, image_demo):
    client.put_flavor("tftaken", vcpus=1, memory_mib=64)
    client.put_group("tftakengrp", image="demo", flavor="small", size=0, labels={"owner": "other"})
    try:
        tf = make_tf()
        tf.write(TAKEN)
        tf.init()
        err = tf.apply(ok=(1,)).stderr
        assert "Error: flavor 'tftaken' already exists" in err, err
        assert "terraform import cowfleet_flavor.<NAME> tftaken" in err
        assert "Error: instance group 'tftakengrp' already exists" in err
        assert "terraform import cowfleet_instance_group.<NAME> tftakengrp" in err
        assert 'name       = "tftaken"' in err                       # the line at fault
        # nothing taken over: both as their owner left them, neither in this state
        flavor = client.get_flavor("tftaken")
        assert (flavor["vcpus"], flavor["memory_mib"]) == (1, 64)
        assert client.get_group("tftakengrp")["labels"] == {"owner": "other"}
        assert tf.run("state", "list", ok=(0, 1)).stdout.strip() == ""
        # the hint works: imported, the flavor is then updated in place
        tf.run("import", "-input=false", "-no-color", "cowfleet_flavor.mine", "tftaken")
        tf.run("state", "list")
        code, text = tf.plan_exitcode("-target=cowfleet_flavor.mine")
        assert code == 2 and "1 to change" in text, text
        tf.apply("-target=cowfleet_flavor.mine")
        assert client.get_flavor("tftaken")["vcpus"] == 2
        tf.run("state", "rm", "cowfleet_flavor.mine")
    finally:
        client.delete_group("tftakengrp")
        client.delete_flavor("tftaken")


BUILT_IN = HEAD + """resource "cowfleet_flavor" "small" {
  name       = "small"
  vcpus      = 8
  memory_mib = 8192
}
"""


def test_a_built_in_flavor_name_is_refused_at_plan(make_tf, client):
    before = client.get_flavor("small")
    tf = make_tf()
    tf.write(BUILT_IN)
    tf.init()
    code, text = tf.plan_exitcode()
    assert code == 1, text
    assert "Error: flavor 'small' is built in" in text
    assert 'resource "cowfleet_flavor" "small"' in text and 'name       = "small"' in text
    assert client.get_flavor("small") == before


DEFAULTS = HEAD + """resource "cowfleet_flavor" "f" {
  name       = "tfdefaults"
  vcpus      = 1
  memory_mib = 64
%(flavor)s}
resource "cowfleet_instance_group" "g" {
  name   = "tfdefaults"
  image  = "demo"
  flavor = "small"
  size   = 0
%(group)s}
"""
SET = {"flavor": "  disk_gib = 3\n",
       "group": '  persistent     = true\n  wait_for_ready = false\n'
                '  placement {\n    strategy     = "pack"\n    max_per_node = 2\n  }\n'
                '  update_policy {\n    max_unavailable = 0\n  }\n'}
LEFT_OUT = {"flavor": "",
            "group": '  placement {\n    max_per_node = 2\n  }\n  update_policy {\n    max_unavailable = 0\n  }\n'}


def test_removing_a_line_plans_the_documented_default(make_tf, client, image_demo):
    tf = make_tf()
    tf.write(DEFAULTS % SET)
    tf.init()
    try:
        tf.apply()
        group = client.get_group("tfdefaults")
        assert group["persistent"] is True and group["placement"]["strategy"] == "pack"
        assert client.get_flavor("tfdefaults")["disk_gib"] == 3
        assert tf.plan_exitcode()[0] == 0
        # the lines taken out: each planned back to its default, in place
        tf.write(DEFAULTS % LEFT_OUT)
        code, text = tf.plan_exitcode()
        assert code == 2 and "2 to change" in text, text
        flat = " ".join(text.split())
        for change in ("persistent = true -> false", "disk_gib = 3 -> 1", 'strategy = "pack" -> "spread"',
                       "wait_for_ready = false -> true"):
            assert f"~ {change}" in flat, (change, text)
        tf.apply()
        group = client.get_group("tfdefaults")
        assert group["persistent"] is False
        assert group["placement"] == {"strategy": "spread", "max_per_node": 2}
        assert group["update_policy"] == {"max_unavailable": 0, "max_surge": 1}
        assert client.get_flavor("tfdefaults")["disk_gib"] == 1
        code, text = tf.plan_exitcode()
        assert code == 0, text
    finally:
        tf.run("destroy", "-auto-approve", "-input=false", "-no-color")
    assert client.get_group("tfdefaults") is None and client.get_flavor("tfdefaults") is None


COSMETIC = HEAD + """resource "cowfleet_instance_group" "g" {
  name   = "tfcosmetic"
  image  = "demo"
  flavor = "small"
  size   = 0
%s}
"""
TIMEOUTS = '  timeouts {\n    create = "3m"\n    update = "3m"\n  }\n'


def _plan_json(tf) -> tuple[list, set]:
    """The planned change of the one group: its actions and the attributes
    unknown until apply (after_unknown mirrors known values as []/{}/false)."""
    tf.run("plan", "-input=false", "-no-color", "-out=tfplan")
    (rc,) = json.loads(tf.run("show", "-json", "tfplan").stdout)["resource_changes"]
    return rc["change"]["actions"], {k for k, v in rc["change"]["after_unknown"].items() if v is True}


def test_terraform_only_changes_call_nothing_and_labels_keep_instances_known(make_tf, client, image_demo):
    tf = make_tf()
    tf.write(COSMETIC % '  labels = { v = "1" }\n')
    tf.init()
    try:
        tf.apply()
        # labels only: the instances stay known (outputs built on them too); status is read again
        tf.write(COSMETIC % '  labels = { v = "2" }\n')
        assert _plan_json(tf) == (["update"], {"status"})
        tf.apply()
        generation = client.get_group("tfcosmetic")["generation"]
        # a timeouts block alone: no change at all (as SDKv2 providers plan it)
        tf.write(COSMETIC % ('  labels = { v = "2" }\n' + TIMEOUTS))
        code, text = tf.plan_exitcode()
        assert code == 0 and "No changes" in text, text
        # wait_for_ready: an update of Terraform's own value, nothing unknown, nothing sent
        tf.write(COSMETIC % ('  labels = { v = "2" }\n  wait_for_ready = false\n' + TIMEOUTS))
        assert _plan_json(tf) == (["update"], set())
        tf.apply()
        assert client.get_group("tfcosmetic")["generation"] == generation
        assert tf.plan_exitcode()[0] == 0

        # imported into a configuration with a timeouts block: the next plan is clean
        other = make_tf()
        other.write(COSMETIC % ('  labels = { v = "2" }\n  wait_for_ready = false\n' + TIMEOUTS))
        other.init()
        other.run("import", "-input=false", "-no-color", "cowfleet_instance_group.g", "tfcosmetic")
        code, text = other.plan_exitcode()
        assert code == 2 and "wait_for_ready" in text, text        # import cannot know wait_for_ready
        other.write(COSMETIC % ('  labels = { v = "2" }\n' + TIMEOUTS))
        code, text = other.plan_exitcode()
        assert code == 0 and "No changes" in text, text
        other.run("state", "rm", "cowfleet_instance_group.g")
    finally:
        tf.run("destroy", "-auto-approve", "-input=false", "-no-color")
    assert client.get_group("tfcosmetic") is None


def _provider_parent(session: int) -> int:
    """The Terraform process that started the provider, in ``session``: under
    the venv's Python wrapper and Terraform's own panicwrap parent, which
    leave SIGINT to it (a terminal signals them all)."""
    from pathlib import Path
    for p in Path("/proc").iterdir():
        try:
            stat = (p / "stat").read_text() if p.name.isdigit() else ""
            cmd = (p / "cmdline").read_bytes() if stat else b""
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if stat and int(fields[3]) == session and b"terraform-provider-cowfleet" in cmd:
            return int(fields[1])
    raise AssertionError(f"no provider process in session {session}")


STOPPED = HEAD + """resource "cowfleet_flavor" "huge" {
  name       = "tfhuge"
  vcpus      = 256
  memory_mib = 4194304
}
resource "cowfleet_instance_group" "waits" {
  count     = 12
  name      = "tfstop${count.index}"
  image     = "demo"
  flavor    = cowfleet_flavor.huge.name
  size      = 1
  user_data = "#cloud-config\\npassword: tfsecret\\n"
  timeouts {
    create = "3m"
  }
}
"""


def test_ctrl_c_under_12_waiting_creates_is_answered_at_once_and_keeps_what_was_made(make_tf, client, image_demo,
                                                                                   lab):
    """An interrupt (SIGINT to Terraform's core process alone, so that only the
    Stop RPC reaches the provider) while 10 creates wait for groups that can never
    be placed (a flavor no node fits) and 2 more queue behind them
    (Terraform's parallelism): Stop is answered although 10 RPCs block, the
    provider's waits end at once and Terraform exits; every group the service
    made is in the state (tainted), none is lost. (Ctrl-C in a terminal also
    reaches the provider itself, which stops on SIGINT as on Stop.) On the way: user_data is shown as a
    sensitive value, the provider logs its waits (TF_LOG), and every request
    names the provider and Terraform's version (User-Agent)."""
    import os
    import signal
    import subprocess
    import time

    from tests.helpers import wait_until
    from tests.terraform.conftest import BIN

    tf = make_tf()
    tf.write(STOPPED)
    tf.init()
    names = {f"tfstop{i}" for i in range(12)}
    log = tf.dir / "tf.log"
    env = dict(tf.env, TF_LOG="DEBUG", TF_LOG_PATH=str(log))
    # output to files, not pipes: the provider processes inherit them and would
    # hold a pipe open after a Terraform that failed the test is killed
    with open(tf.dir / "out", "w") as out_file, open(tf.dir / "err", "w") as err_file:
        proc = subprocess.Popen([str(BIN / "terraform"), "apply", "-auto-approve", "-input=false", "-no-color"],
                                cwd=tf.dir, env=env, stdout=out_file, stderr=err_file, start_new_session=True)
    try:
        def waiting() -> int:
            groups = [g for g in client.list_groups() if g["name"] in names]
            return len(groups) if all(g["status"]["ready"] == 0 for g in groups) else -1
        wait_until(lambda: waiting() >= 10, 120, "10 groups made and waiting")
        wait_until(lambda: log.read_text().count("waiting for instance group 'tfstop") >= 10, 60,
                   "the provider logging 10 waits")
        t0 = time.monotonic()
        os.kill(_provider_parent(proc.pid), signal.SIGINT)
        proc.wait(timeout=60)
        answered = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out, err = (tf.dir / "out").read_text(), (tf.dir / "err").read_text()
    try:
        print(f"\nCtrl-C with 10 creates waiting and 2 queued: Terraform exited after {answered:.2f}s")
        assert proc.returncode == 1, (out, err)
        assert answered < 2.0, (answered, err)
        assert "interrupted while waiting for instance group 'tfstop" in err, err
        assert "user_data = (sensitive value)" in " ".join(out.split()) and "tfsecret" not in out + err
        made = {g["name"] for g in client.list_groups() if g["name"] in names}
        in_state = set(tf.run("state", "list").stdout.split())
        assert len(made) >= 10
        assert {f"cowfleet_instance_group.waits[{n[len('tfstop'):]}]" for n in made} <= in_state, (made, in_state)
        access = (lab.dir / "access.log").read_text()
        assert '"terraform-provider-cowfleet/0.1.0 terraform/1.0.3"' in access
    finally:
        tf.run("destroy", "-auto-approve", "-input=false", "-no-color")
    assert not {g["name"] for g in client.list_groups()} & names
    assert client.get_flavor("tfhuge") is None
