"""``cowfleet terraform install``: make the provider usable by a local Terraform.

Writes, under one folder (default ``~/.local/share/cowfleet/terraform``):

- ``mirror/<SOURCE>/<VERSION>/<os_arch>/terraform-provider-cowfleet_v<VERSION>``:
  a two-line launcher of this installation's provider, in the unpacked
  filesystem-mirror layout that ``terraform init`` installs from (no registry
  is asked for it);
- ``terraformrc``: the CLI configuration naming it; point
  ``TF_CLI_CONFIG_FILE`` at it (or copy its block into ``~/.terraformrc``);
- with ``--dev-override``, also ``bin/terraform-provider-cowfleet`` and a
  ``dev_overrides`` entry for it: Terraform then uses it without
  ``terraform init`` or lock-file checks (and warns so on every command).

The launcher runs the provider of the Python environment that ran this
command, so upgrading the package needs no new install.
"""
from __future__ import annotations

import os
import platform
import stat
import sys
from pathlib import Path

from cowfleet import __version__

SOURCE = "cowfleet.local/cowfleet/cowfleet"
EXECUTABLE = "terraform-provider-cowfleet"


def default_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "cowfleet" / "terraform"


def os_arch() -> str:
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(machine, machine)
    return f"{sys.platform.rstrip('0123456789')}_{arch}"


def launcher() -> str:
    script = Path(sys.executable).parent / EXECUTABLE
    target = f"'{script}'" if script.exists() else f"'{sys.executable}' -m cowfleet.provider"
    return f"#!/bin/sh\nexec {target} \"$@\"\n"


def _write_exec(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def cli_config(directory: Path, dev_override: bool = False) -> str:
    override = ("  dev_overrides {\n"
                f'    "{SOURCE}" = "{directory / "bin"}"\n'
                "  }\n") if dev_override else ""
    return (
        "provider_installation {\n"
        "  # the cowfleet provider, from a local folder: no registry is asked for it\n"
        f"{override}"
        "  filesystem_mirror {\n"
        f'    path    = "{directory / "mirror"}"\n'
        f'    include = ["{SOURCE}"]\n'
        "  }\n"
        "  direct {\n"
        f'    exclude = ["{SOURCE}"]\n'
        "  }\n"
        "}\n")


def install(directory: Path | str | None = None, dev_override: bool = False) -> Path:
    """Install the launcher and the CLI configuration; returns the configuration file."""
    directory = Path(directory or default_dir()).resolve()
    text = launcher()
    _write_exec(directory / "mirror" / SOURCE / __version__ / os_arch() / f"{EXECUTABLE}_v{__version__}", text)
    if dev_override:
        _write_exec(directory / "bin" / EXECUTABLE, text)
    rc = directory / "terraformrc"
    rc.write_text(cli_config(directory, dev_override))
    return rc


def cmd_install(args) -> int:
    rc = install(args.dir, args.dev_override)
    print(f"# installed the cowfleet Terraform provider under {rc.parent}")
    print(f"# use it with:\nexport TF_CLI_CONFIG_FILE={rc}")
    print("# or put this in ~/.terraformrc:\n")
    print(rc.read_text())
    print("# and in your configuration:\n"
          "terraform {\n"
          f'  required_providers {{\n    cowfleet = {{ source = "{SOURCE}" }}\n  }}\n'
          "}\n"
          "# then: terraform init")
    return 0
