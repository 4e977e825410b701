"""The Terraform provider end to end: real Terraform, real service and agents.

One group's life in the order a user lives it (each step needs the one
before, so it is one test): apply the README example with 3 instances, plan
again (no changes), scale to 5 in place, import into an empty state (no
changes), destroy (nothing left on the agents), and the drift that a plan
then sees. Other tests: invalid input, image/flavor/data sources, bad
endpoint or token.
"""
from __future__ import annotations

import os
import shutil

import pytest
import requests

from tests.helpers import wait_until
from tests.integration.test_end_to_end import lab_domains
from tests.terraform.conftest import EXAMPLE, HEAD_ONLY

# what every configuration here starts with
HEAD = HEAD_ONLY

pytestmark = pytest.mark.integration


def tfvars(demo_image, size: int) -> str:
    return (f'image_name   = "tfdemo"\nimage_source = "file://{demo_image}"\n'
            f'group_name   = "tfweb"\nsize         = {size}\nmin_replicas = 1\n')


def test_example_group_lifecycle(make_tf, client, lab, demo_image):
    tf = make_tf()
    shutil.copy(EXAMPLE, tf.dir / "main.tf")
    tf.write(tfvars(demo_image, 3), "terraform.tfvars")
    tf.init()

    # apply: waits until all 3 are ready
    tf.apply()
    group = client.get_group("tfweb")
    assert group["status"]["ready"] == 3 and group["status"]["phase"] == "ready"
    assert group["placement"]["strategy"] == "pack" and group["update_policy"]["max_unavailable"] == 0
    out = tf.output()
    assert sorted(i["id"] for i in out["instances"]) == sorted(i["id"] for i in group["instances"])
    assert all(i["state"] == "ready" and i["node"] for i in out["instances"])
    assert out["status"]["ready"] == 3
    # each instance answers on the address Terraform outputs, with the example's user data run
    assert out["addresses"] == {i["id"]: i["address"] for i in group["instances"]}
    for iid, address in out["addresses"].items():
        page = requests.get(f"http://{address}/", timeout=10).text
        assert f"instance-id: {iid}" in page and f"hello from {iid}" in page
    assert any(n.endswith("-compute-1 (rack-1)") or "-compute-1" in n for n in out["compute_nodes"])
    assert client.get_image("tfdemo")["status"] == "available"
    t_apply = tf.last("apply")

    code, text = tf.plan_exitcode()
    assert code == 0, text
    assert "No changes" in text
    t_plan = tf.last("plan")

    # scale to 5: in place, no replacement
    tf.write(tfvars(demo_image, 5), "terraform.tfvars")
    code, text = tf.plan_exitcode()
    assert code == 2, text
    assert "~ size" in text and "3 -> 5" in text
    assert "1 to change, 0 to destroy" in text and "must be replaced" not in text
    before = {i["id"] for i in client.get_group("tfweb")["instances"]}
    tf.apply()
    group = client.get_group("tfweb")
    assert group["status"]["ready"] == 5
    assert before <= {i["id"] for i in group["instances"]}, "scaling out kept the instances it had"
    assert len(tf.output()["instances"]) == 5
    t_scale = tf.last("apply")
    code, text = tf.plan_exitcode()
    assert code == 0, text

    # import into an empty state: the same configuration then plans no changes
    other = make_tf()
    shutil.copy(EXAMPLE, other.dir / "main.tf")
    other.write(tfvars(demo_image, 5), "terraform.tfvars")
    other.init()
    other.run("import", "-input=false", "-no-color", "cowfleet_image.demo", "tfdemo")
    other.run("import", "-input=false", "-no-color", "cowfleet_instance_group.web", "tfweb")
    assert other.planned_actions() == {"cowfleet_image.demo": ["no-op"], "cowfleet_instance_group.web": ["no-op"]}
    # import stores no outputs, so the plan offers to add them: once they are in, no changes at all
    other.apply("-refresh-only")
    code, text = other.plan_exitcode()
    assert code == 0, text

    # destroy: the group is gone, and so are its domains
    tf.run("destroy", "-auto-approve", "-input=false", "-no-color")
    assert client.get_group("tfweb") is None
    assert client.get_image("tfdemo") is None
    assert not [d for d in lab_domains(lab) if "--tfweb-" in d]
    t_destroy = tf.last("destroy")

    # drift: the imported state still has them; a plan sees them gone and re-creates
    code, text = other.plan_exitcode()
    assert code == 2, text
    assert "2 to add, 0 to change, 0 to destroy" in text
    other.run("state", "rm", "cowfleet_instance_group.web", "cowfleet_image.demo")

    print(f"\nterraform apply (image + 3 ready) {t_apply:.1f}s, plan {t_plan:.1f}s, "
          f"scale 3->5 {t_scale:.1f}s, destroy {t_destroy:.1f}s")


EMPTY_GROUP = HEAD + """resource "cowfleet_instance_group" "drift" {
  name           = "tfdrift"
  image          = "demo"
  flavor         = "small"
  size           = 0
  wait_for_ready = false
}
"""


def test_group_deleted_behind_terraforms_back_is_planned_again(make_tf, client, image_demo):
    """Drift, literally: the group goes by the API; the next plan re-creates it
    (a group of 0 costs no VM)."""
    tf = make_tf()
    tf.write(EMPTY_GROUP)
    tf.init()
    tf.apply()
    assert client.get_group("tfdrift")["size"] == 0
    assert tf.plan_exitcode()[0] == 0
    client.delete_group("tfdrift")
    wait_until(lambda: client.get_group("tfdrift") is None, 60, "group tfdrift gone")
    code, text = tf.plan_exitcode()
    assert code == 2, text
    assert "cowfleet_instance_group.drift will be created" in text and "1 to add, 0 to change" in text
    tf.apply()
    assert client.get_group("tfdrift") is not None
    tf.run("destroy", "-auto-approve", "-input=false", "-no-color")
    assert client.get_group("tfdrift") is None


OBJECTS = HEAD + """resource "cowfleet_image" "img" {
  name         = "tfimg"
  source_url   = "file://%(image)s"
  min_replicas = 1
  timeouts {
    create = "2m"
  }
}
resource "cowfleet_flavor" "tiny" {
  name       = "tftiny"
  vcpus      = 1
  memory_mib = %(mib)d
}
data "cowfleet_image" "img" {
  name = cowfleet_image.img.name
}
data "cowfleet_nodes" "all" {}
output "sha256" { value = data.cowfleet_image.img.sha256 }
output "roles" { value = sort([for n in data.cowfleet_nodes.all.nodes : n.role]) }
"""


def test_image_flavor_data_sources_and_import(make_tf, client, demo_image, image_demo):
    tf = make_tf()
    tf.write(OBJECTS % {"image": demo_image, "mib": 128})
    tf.init()
    tf.apply()
    img = client.get_image("tfimg")
    assert img["status"] == "available" and img["sha256"] == image_demo["sha256"]
    assert client.get_flavor("tftiny")["memory_mib"] == 128
    out = tf.output()
    assert out["sha256"] == img["sha256"]
    assert out["roles"] == ["compute", "storage"]
    code, text = tf.plan_exitcode()
    assert code == 0, text

    # a flavor change is in place
    tf.write(OBJECTS % {"image": demo_image, "mib": 256})
    tf.apply()
    assert client.get_flavor("tftiny")["memory_mib"] == 256

    # import both into an empty state: no changes, the image's timeouts block
    # included (timeouts alone never make a diff; see provider-shim/README.md)
    other = make_tf()
    other.write(OBJECTS % {"image": demo_image, "mib": 256})
    other.init()
    missing = other.run("import", "-input=false", "-no-color", "cowfleet_flavor.tiny", "nosuch", ok=(1,))
    assert "non-existent remote object" in missing.stderr, missing.stderr
    other.run("import", "-input=false", "-no-color", "cowfleet_flavor.tiny", "tftiny")
    other.run("import", "-input=false", "-no-color", "cowfleet_image.img", "tfimg")
    # (only the outputs, never applied in this folder, are new)
    assert other.planned_actions() == {"cowfleet_flavor.tiny": ["no-op"], "cowfleet_image.img": ["no-op"]}
    other.run("state", "rm", "cowfleet_flavor.tiny", "cowfleet_image.img")

    tf.run("destroy", "-auto-approve", "-input=false", "-no-color")
    assert client.get_image("tfimg") is None
    assert client.get_flavor("tftiny") is None


def test_unreachable_endpoint_and_refused_token(make_tf, lab):
    config = OBJECTS.split("resource")[0] + 'data "cowfleet_nodes" "all" {}\n'
    # installed as the README says (filesystem mirror, no dev override)
    tf = make_tf(endpoint="http://127.0.0.1:9", mirror_only=True)
    tf.write(config)
    init = tf.init()
    assert "Installing cowfleet.local/cowfleet/cowfleet v0.1.0" in init.stdout, init.stdout
    code, text = tf.plan_exitcode()
    assert "development overrides" not in text
    assert code == 1
    assert "Error: cannot reach the cowfleet service at http://127.0.0.1:9" in text, text

    tf = make_tf(token="not-a-token")
    tf.write(config)
    tf.init()
    code, text = tf.plan_exitcode()
    assert code == 1
    assert f"Error: the cowfleet service at {lab.state.endpoint} refused the token" in text, text

    tf = make_tf(endpoint="notaurl")
    tf.write(config)
    tf.init()
    code, text = tf.plan_exitcode()
    assert code == 1 and "Error: cowfleet provider: endpoint is not a URL" in text, text


UPLOAD = HEAD + """resource "cowfleet_image" "up" {
  name         = "tfupload"
  path         = "%(path)s"
  min_replicas = 1
}
output "sha256" { value = cowfleet_image.up.sha256 }
output "status" { value = cowfleet_image.up.status }
"""


def test_image_uploaded_from_a_local_path(make_tf, client, lab):
    """`path` streams the file through PUT /v1/images/{name}/data."""
    import hashlib
    tf = make_tf()
    disk = tf.dir / "disk.raw"
    disk.write_bytes(os.urandom(2 << 20))
    tf.write(UPLOAD % {"path": disk})
    tf.init()
    tf.apply()
    img = client.get_image("tfupload")
    assert img["status"] == "available" and img["sha256"] == hashlib.sha256(disk.read_bytes()).hexdigest()
    assert tf.output() == {"sha256": img["sha256"], "status": "available"}
    code, text = tf.plan_exitcode()
    assert code == 0, text
    tf.run("destroy", "-auto-approve", "-input=false", "-no-color")
    assert client.get_image("tfupload") is None


BLOCKS = HEAD + """resource "cowfleet_instance_group" "blocks" {
  name           = "tfblocks"
  image          = "demo"
  flavor         = "small"
  size           = 0
  wait_for_ready = false
  %(blocks)s
}
"""


def test_removing_optional_blocks_and_a_group_caught_deleting(make_tf, client, image_demo):
    """Blocks taken out of the configuration go back to the API's defaults (in
    place); a group being deleted behind Terraform's back is re-created by one
    apply (which waits for the deletion to finish)."""
    tf = make_tf()
    tf.write(BLOCKS % {"blocks": 'placement {\n strategy = "pack"\n }\n'
                                 "update_policy {\n max_unavailable = 0\n max_surge = 2\n }"})
    tf.init()
    tf.apply()
    assert client.get_group("tfblocks")["placement"]["strategy"] == "pack"
    tf.write(BLOCKS % {"blocks": ""})
    assert tf.planned_actions() == {"cowfleet_instance_group.blocks": ["update"]}
    tf.apply()
    got = client.get_group("tfblocks")
    assert got["placement"]["strategy"] == "spread" and got["update_policy"] == {"max_unavailable": 1,
                                                                                  "max_surge": 1}
    assert tf.plan_exitcode()[0] == 0
    # caught in phase deleting: gone for Terraform, and created anew in one apply
    client.put_group("tfblocks", image="demo", flavor="small", size=1)      # an instance to take its time
    wait_until(lambda: client.get_group("tfblocks")["instances"], 60, "an instance placed")
    client.delete_group("tfblocks")
    assert client.get_group("tfblocks")["status"]["phase"] == "deleting"
    tf.apply()
    got = client.get_group("tfblocks")
    assert got["status"]["phase"] != "deleting" and got["size"] == 0
    assert tf.plan_exitcode()[0] == 0
    tf.run("destroy", "-auto-approve", "-input=false", "-no-color")
    assert client.get_group("tfblocks") is None


BY_CONTENT = HEAD + """resource "cowfleet_image" "up" {
  name         = "tfcontent"
  path         = "%(path)s"
  sha256       = filesha256("%(path)s")
  min_replicas = 1
}
"""


def test_new_content_behind_path_replaces_the_image_and_a_missing_file_leaves_nothing(make_tf, client):
    import hashlib
    tf = make_tf()
    disk = tf.dir / "disk.raw"
    disk.write_bytes(os.urandom(1 << 20))
    tf.write(BY_CONTENT % {"path": disk})
    tf.init()
    tf.apply()
    assert client.get_image("tfcontent")["sha256"] == hashlib.sha256(disk.read_bytes()).hexdigest()
    assert tf.plan_exitcode()[0] == 0
    disk.write_bytes(os.urandom(1 << 20))            # new bytes, same path
    assert tf.planned_actions() == {"cowfleet_image.up": ["delete", "create"]}
    tf.apply()
    assert client.get_image("tfcontent")["sha256"] == hashlib.sha256(disk.read_bytes()).hexdigest()
    tf.run("destroy", "-auto-approve", "-input=false", "-no-color")
    assert client.get_image("tfcontent") is None
    # a path with no file: a diagnostic on path, and no image left behind
    tf2 = make_tf()
    tf2.write(BY_CONTENT.replace('filesha256("%(path)s")', '"' + "0" * 64 + '"') % {"path": tf.dir / "none.raw"})
    tf2.init()
    proc = tf2.apply(ok=(1,))
    assert "Image file not found" in proc.stderr and "path" in proc.stderr, proc.stderr
    assert client.get_image("tfcontent") is None


NEVER_READY = HEAD + """resource "cowfleet_instance_group" "stuck" {
  name          = "tfstuck"
  image         = "cond-zeros"
  flavor        = "small"
  size          = 1
  ready_timeout = 10
  timeouts {
    create = "5m"
  }
}
"""


def test_a_group_that_cannot_become_ready_ends_the_apply_when_it_says_so(make_tf, client, never_boots):
    """A guest that never boots is failed at the group's ready_timeout (10 s):
    from then on only a change of the group can make it ready, so the apply
    ends with a diagnostic saying why instead of waiting out its create
    timeout (5 min here; it said 'not ready after 300s' before), and the
    group stays in the state, tainted, for the next apply to replace."""
    tf = make_tf()
    tf.write(NEVER_READY)
    tf.init()
    proc = tf.apply(ok=(1,))
    err = " ".join(proc.stderr.split())
    assert "instance group 'tfstuck' cannot become ready: InstancesFailed" in err, proc.stderr
    assert "ready_timeout of 10 s" in err and "not ready after" not in err, proc.stderr
    assert client.get_group("tfstuck")["status"]["failed"] == 1
    assert "cowfleet_instance_group.stuck" in tf.run("state", "list").stdout
    assert tf.planned_actions()["cowfleet_instance_group.stuck"] == ["delete", "create"]
    print(f"\napply of a group that never becomes ready ended after {tf.last('apply'):.1f} s (ready_timeout 10 s)")


PANICS = HEAD + """resource "cowfleet_instance_group" "panics" {
  name      = "tfpanic"
  image     = "demo"
  flavor    = "small"
  size      = 1
  user_data = <<-EOT
    #!/bin/sh
    echo c > /proc/sysrq-trigger
  EOT
}
"""


def test_a_guest_whose_kernel_panics_ends_the_apply_with_its_defaults(make_tf, client, image_demo):
    """The hang issue 15 asked about: an example's first apply waited out
    its 10 min create timeout, most likely for a guest whose kernel panicked
    at every boot on the loaded CI machine (the timer check, now off). With
    the defaults (ready_timeout 900 s, create timeout 10 min) only the
    failure at the panic ends it early: the apply ends with the reason."""
    tf = make_tf()
    tf.write(PANICS)
    tf.init()
    proc = tf.apply(ok=(1,))
    err = " ".join(proc.stderr.split())
    assert "instance group 'tfpanic' cannot become ready: InstancesFailed" in err, proc.stderr
    assert "GuestKernelPanic" in err or "kernel panicked" in err, proc.stderr
    assert client.get_group("tfpanic")["instances"][0]["reason"] == "GuestKernelPanic"
    assert tf.last("apply") < 300, "ended by the panic, not by a timeout"
    tf.run("destroy", "-auto-approve", "-input=false", "-no-color")
    print(f"\napply of a group whose guest panics ended after {tf.last('apply'):.1f} s")
