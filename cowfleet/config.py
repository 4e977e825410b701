"""Where a user's settings come from, outside any one component (bottom layer).

The one-node and racks labs keep their state in one folder, and the CLI, the
Terraform provider and the tests read the endpoint and token the lab wrote
into its ``env`` file (``cowfleet.client.setting``).
"""
from __future__ import annotations

import os
from pathlib import Path

LAB_DIR_DEFAULT = "/var/lib/cowfleet/lab"


def lab_dir() -> Path:
    """The lab's folder: ``$COWFLEET_LAB_DIR``, else /var/lib/cowfleet/lab."""
    return Path(os.environ.get("COWFLEET_LAB_DIR", LAB_DIR_DEFAULT))


def lab_env_file() -> Path:
    """The ``env`` file a running lab writes: COWFLEET_ENDPOINT and COWFLEET_TOKEN."""
    return lab_dir() / "env"
