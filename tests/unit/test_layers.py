"""The layers of docs/design.md ("Map of layers"), enforced: import-linter's
contracts in pyproject.toml ([tool.importlinter]) must hold, and every module
of the cowfleet package must sit in a layer.

import-linter (grimp) finds a package's modules by walking its folder, but
pyproject's package-dir maps cowfleet.service, cowfleet.agents and
cowfleet.provider onto other top-level folders (service/, agents/,
provider-shim/). So the check runs on a tree of symbolic links laid out as
an installed cowfleet is (grimp follows them), built from that same mapping.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def installed_layout(dest: Path) -> Path:
    """``dest/cowfleet/...`` as an installed cowfleet lays its folders out;
    returns the folder to put on PYTHONPATH."""
    mapping = PYPROJECT["tool"]["setuptools"]["package-dir"]
    top = dest / "cowfleet"
    top.mkdir(parents=True)
    for entry in (ROOT / mapping["cowfleet"]).iterdir():
        if entry.name != "__pycache__":
            (top / entry.name).symlink_to(entry)
    for pkg, folder in sorted(mapping.items()):
        if pkg != "cowfleet":
            link = dest.joinpath(*pkg.split("."))
            assert not link.exists(), f"{pkg} would shadow a folder of cowfleet/"
            link.symlink_to(ROOT / folder, target_is_directory=True)
    return dest


def lint_imports(site: Path, cwd: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` (import-linter's command) on the tree at ``site``."""
    env = dict(os.environ, PYTHONPATH=str(site))
    return subprocess.run([str(Path(sys.executable).with_name("lint-imports")), "--no-cache",
                           str(ROOT / "pyproject.toml")],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_import_contracts_hold(tmp_path):
    run = lint_imports(installed_layout(tmp_path / "site"), tmp_path)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    contracts = len(PYPROJECT["tool"]["importlinter"]["contracts"])
    assert f"{contracts} kept, 0 broken" in run.stdout, run.stdout[-2000:]


def test_every_module_of_cowfleet_sits_in_a_layer(tmp_path):
    """A new module under cowfleet/ (or a new mapped package) must be placed in
    a layer, else the layers contract would not look at it."""
    contract = next(c for c in PYPROJECT["tool"]["importlinter"]["contracts"] if c["id"] == "layers")
    layered = {name.strip() for layer in contract["layers"] for name in layer.replace("|", ":").split(":")}
    path = installed_layout(tmp_path / "site")
    children = {f"cowfleet.{p.stem}" for p in (path / "cowfleet").iterdir()
                if p.name != "__init__.py" and (p.suffix == ".py" or (p / "__init__.py").exists())}
    assert children == layered, (f"not in a layer: {sorted(children - layered)}; "
                                 f"no such module: {sorted(layered - children)}")


def test_a_broken_layer_fails_the_check(tmp_path):
    """The check can fail: a bottom-layer module importing the service is caught."""
    site = installed_layout(tmp_path / "site")
    bottom = site / "cowfleet" / "names.py"
    text = bottom.read_text()
    bottom.unlink()                     # the link, not the file
    bottom.write_text(text + "\nimport cowfleet.service.api  # noqa\n")
    run = lint_imports(site, tmp_path)
    assert run.returncode != 0
    assert "cowfleet.names is not allowed to import cowfleet.service" in run.stdout, run.stdout[-3000:]
