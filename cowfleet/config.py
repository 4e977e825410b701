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


# Every environment variable a cowfleet program reads, and what for: the
# programs' --help lists them from here (cowfleet-agent: AGENT_ENVIRONMENT).
AGENT_ENVIRONMENT = {
    "COWFLEET_LOG_LEVEL": "the default of --log-level",
    "COWFLEET_VIRT_TYPE": "kvm or qemu: skip the probe of --virt-type auto",
    "COWFLEET_TGT_CONTROL_PORT": "storage: the management channel of the tgtd to use (default: the machine's, 0)",
    "COWFLEET_TGT_LOCK": "storage: the lock file serialising tgtadm calls (default /run/lock/cowfleet-tgt.lock)",
    "COWFLEET_FAULT_PAUSE": "tests: a file whose presence stops the agent at fault points (cowfleet/faults.py)",
    "COWFLEET_PLACEMENT_CHUNK_BYTES": "compute: the size a placement transaction stays under (default 262144)",
}


# What the CLI reads from its environment (``cowfleet --help`` lists it).
CLI_ENVIRONMENT = {
    "COWFLEET_ENDPOINT": "the service's URL when --endpoint is not given (else the lab's env file)",
    "COWFLEET_TOKEN": "the bearer token when --token is not given (else the lab's env file)",
    "COWFLEET_LAB_DIR": f"the lab's folder (default {LAB_DIR_DEFAULT})",
    "COWFLEET_ZK": "ZooKeeper for 'serve' and the token bootstrap ('token ... --zk')",
    "COWFLEET_TOKENS_FILE": "'serve': a file of 'TOKEN ROLE' lines",
    "COWFLEET_CACHE_DIR": "where 'image build-debian' keeps its image (default /var/cache/cowfleet)",
    "COWFLEET_DEBIAN_SOURCES": "'image build-debian': an apt sources file (default: the host's)",
    "COWFLEET_DEBUG": "1: show the traceback of an unexpected error",
}


def environment_help(variables: dict[str, str]) -> str:
    """An argparse epilog listing ``variables``."""
    width = max(map(len, variables))
    return "environment:\n" + "\n".join(f"  {k:<{width}}  {v}" for k, v in variables.items())
