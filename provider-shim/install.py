"""``cowfleet terraform install``: make the provider usable by a local Terraform.

Writes, under one folder (default ``~/.local/share/cowfleet/terraform``):

- ``mirror/<SOURCE>/terraform-provider-cowfleet_<VERSION>_<os_arch>.zip``: the
  package, in the packed filesystem-mirror layout that ``terraform init``
  installs from (no registry is asked for it). Its bytes depend on the
  version alone (a launcher that names no path, fixed timestamps and modes,
  stored uncompressed), so its hash is the same on every machine and a team
  can commit ``.terraform.lock.hcl``;
- ``bin/terraform-provider-cowfleet``: a two-line launcher of the provider of
  the Python environment that ran this command (so upgrading the package
  needs no new install), which the package runs (``PACKAGE_LAUNCHER``);
- ``terraformrc``: the CLI configuration naming the mirror; point
  ``TF_CLI_CONFIG_FILE`` at it (or copy its block into ``~/.terraformrc``);
- with ``--dev-override``, a ``dev_overrides`` entry for ``bin/``: Terraform
  then uses it without ``terraform init`` or lock-file checks (and warns so
  on every command).
"""
from __future__ import annotations

import hashlib
import io
import os
import platform
import shutil
import stat
import sys
import zipfile
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


# What the package holds: the same text on every machine. It finds this
# machine's provider: $COWFLEET_PROVIDER, else bin/ beside the CLI
# configuration Terraform was given (TF_CLI_CONFIG_FILE, as the install
# prints), else terraform-provider-cowfleet on PATH (an activated venv, pipx).
PACKAGE_LAUNCHER = """#!/bin/sh
# terraform-provider-cowfleet {version}: runs this machine's cowfleet provider
exe="${{COWFLEET_PROVIDER:-}}"
if [ -z "$exe" ] && [ -n "${{TF_CLI_CONFIG_FILE:-}}" ]; then
  exe="$(dirname "$TF_CLI_CONFIG_FILE")/bin/{executable}"
  [ -x "$exe" ] || exe=""
fi
[ -n "$exe" ] || exe="$(command -v {executable})"
if [ -z "$exe" ]; then
  echo "{executable}: no cowfleet provider on this machine: run 'cowfleet terraform install' and set" \
       "TF_CLI_CONFIG_FILE as it says, put the cowfleet venv's bin on PATH, or set COWFLEET_PROVIDER" >&2
  exit 1
fi
exec "$exe" "$@"
"""
ZIP_DATE = (1980, 1, 1, 0, 0, 0)         # the earliest a zip can say: no build time in the bytes


def package_name() -> str:
    return f"{EXECUTABLE}_{__version__}_{os_arch()}.zip"


def package() -> bytes:
    """The provider package: one launcher, the same bytes wherever it is built
    (no path, fixed date and mode, stored: no compressor version can differ)."""
    info = zipfile.ZipInfo(f"{EXECUTABLE}_v{__version__}", date_time=ZIP_DATE)
    info.create_system = 3                                   # Unix, so the mode below is read
    info.external_attr = (stat.S_IFREG | 0o755) << 16
    info.compress_type = zipfile.ZIP_STORED
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(info, PACKAGE_LAUNCHER.format(version=__version__, executable=EXECUTABLE))
    return buf.getvalue()


def package_hash(data: bytes) -> str:
    """The ``zh:`` hash Terraform records for a zip package."""
    return "zh:" + hashlib.sha256(data).hexdigest()


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
    _write_exec(directory / "bin" / EXECUTABLE, launcher())
    mirror = directory / "mirror" / SOURCE
    # an unpacked package of this version (an install before packages were
    # zips) would stand beside the zip: Terraform must see one
    shutil.rmtree(mirror / __version__, ignore_errors=True)
    mirror.mkdir(parents=True, exist_ok=True)
    (mirror / package_name()).write_bytes(package())
    rc = directory / "terraformrc"
    rc.write_text(cli_config(directory, dev_override))
    return rc


def cmd_install(args) -> int:
    rc = install(args.dir, args.dev_override)
    print(f"# installed the cowfleet Terraform provider under {rc.parent}")
    print(f"# package {package_name()}: {package_hash(package())} (the same on every machine)")
    print(f"# use it with:\nexport TF_CLI_CONFIG_FILE={rc}")
    print("# or put this in ~/.terraformrc:\n")
    print(rc.read_text())
    print("# and in your configuration:\n"
          "terraform {\n"
          f'  required_providers {{\n    cowfleet = {{ source = "{SOURCE}" }}\n  }}\n'
          "}\n"
          "# then: terraform init")
    return 0
