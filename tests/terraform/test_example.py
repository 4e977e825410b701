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
