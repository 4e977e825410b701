"""The README's Terraform example is canonical HCL and valid against the
provider's schema (no service needed: validate only asks for the schema)."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from tests.terraform.conftest import EXAMPLE, Terraform, tf_env


def test_example_is_formatted_and_valid(tf_rc_mirror):
    d = Path(tempfile.mkdtemp(prefix="cowfleet-tf-", dir="/var/tmp"))
    try:
        shutil.copy(EXAMPLE, d / "main.tf")
        tf = Terraform(d, tf_env(tf_rc_mirror, "http://127.0.0.1:9", "unused"))
        tf.run("fmt", "-check", "-diff")
        tf.init()
        out = tf.run("validate", "-no-color").stdout
        assert "The configuration is valid" in out
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_docs_schema_is_what_terraform_sees_and_doc_examples_are_valid(tf_rc_mirror):
    """provider-shim/docs is generated from schema.schema_json() (the staleness
    test is tests/unit/test_provider_docs.py): Terraform prints exactly that
    schema; every example file the pages show is formatted and valid."""
    import json

    from cowfleet.provider import gen_docs
    from cowfleet.provider.schema import schema_json
    d = Path(tempfile.mkdtemp(prefix="cowfleet-tf-", dir="/var/tmp"))
    try:
        examples = sorted(gen_docs.EXAMPLES.rglob("*.tf"))
        assert len(examples) == 6
        for i, f in enumerate(examples):          # one configuration: the examples refer to each other
            shutil.copy(f, d / f"{i}-{f.parent.name}-{f.name}")
        (d / "disk.raw").write_bytes(b"\0" * 512)   # the upload example's file (validate hashes it)
        tf = Terraform(d, tf_env(tf_rc_mirror, "http://127.0.0.1:9", "unused"))
        tf.run("fmt", "-check", "-diff")
        tf.init()
        assert "The configuration is valid" in tf.run("validate", "-no-color").stdout
        seen = json.loads(tf.run("providers", "schema", "-json").stdout)
        assert seen == json.loads(json.dumps(schema_json()))
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_the_mirror_package_hash_is_the_same_for_every_install(tf_rc_mirror):
    """Two installs (other folders, as on two machines) make the same package:
    the lock file one `terraform init` writes is the other's, so a team can
    commit .terraform.lock.hcl; the package's launcher runs the provider."""
    from tests.terraform.conftest import HEAD_ONLY, _install
    other_dir, other_rc = _install()
    made = [Path(tempfile.mkdtemp(prefix="cowfleet-tf-", dir="/var/tmp")) for _ in range(2)]
    try:
        locks = []
        for d, rc in zip(made, (tf_rc_mirror, other_rc)):
            (d / "main.tf").write_text(HEAD_ONLY)
            if locks:                             # the first install's lock, committed: init checks it
                (d / ".terraform.lock.hcl").write_text(locks[0])
            tf = Terraform(d, tf_env(rc, "http://127.0.0.1:9", "unused"))
            tf.init()
            locks.append((d / ".terraform.lock.hcl").read_text())
            assert "The configuration is valid" in tf.run("validate", "-no-color").stdout
        assert locks[0] == locks[1] and '"h1:' in locks[0], locks
        zips = [sorted(rc.parent.joinpath("mirror").rglob("*.zip")) for rc in (tf_rc_mirror, other_rc)]
        assert [z.read_bytes() for (z,) in zips][0] == [z.read_bytes() for (z,) in zips][1]
    finally:
        for d in made:
            shutil.rmtree(d, ignore_errors=True)
        shutil.rmtree(other_dir, ignore_errors=True)
