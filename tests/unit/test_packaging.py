"""The distribution ships every package folder under the one cowfleet namespace."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_folder_is_listed_and_mapped():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    mapping = cfg["package-dir"]
    found = set()
    for pkg, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([pkg, *rel.parts]) if rel.parts else pkg)
    assert found <= listed, f"package folders missing from pyproject.toml: {sorted(found - listed)}"
    assert all(name == "cowfleet" or name.startswith("cowfleet.") for name in listed)


def test_no_generic_top_level_import_names():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    tops = {name.split(".")[0] for name in cfg["packages"]}
    assert tops == {"cowfleet"}


def test_console_scripts():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"] == {"cowfleet": "cowfleet.cli:main",
                                  "cowfleet-agent": "cowfleet.agents.main:main",
                                  "terraform-provider-cowfleet": "cowfleet.provider.main:main"}
    assert re.match(r">=\s*3\.11", project["requires-python"])
