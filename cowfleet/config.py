"""Where a user's settings come from, outside any one component (bottom layer).

The one-node and racks labs keep their state in one folder, and the CLI, the
Terraform provider and the tests read the endpoint and token the lab wrote
into its ``env`` file (``cowfleet.client.setting``).
"""
from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

LAB_DIR_DEFAULT = "/var/lib/cowfleet/lab"


def lab_dir() -> Path:
    """The lab's folder: ``$COWFLEET_LAB_DIR``, else /var/lib/cowfleet/lab."""
    return Path(os.environ.get("COWFLEET_LAB_DIR", LAB_DIR_DEFAULT))


def lab_env_file() -> Path:
    """The ``env`` file a running lab writes: COWFLEET_ENDPOINT and COWFLEET_TOKEN."""
    return lab_dir() / "env"


# -- the cluster secret ----------------------------------------------------------
# One secret per cluster, shared by the service and every agent: it keys the
# ZooKeeper digest identity every cowfleet client authenticates as (and the
# only one the ACLs of cowfleet's znodes admit: cowfleet/zk/connection.py) and
# the HMAC every P2P request carries (cowfleet/signing.py). It lives in a file
# only its owner reads (0600), named by $COWFLEET_SECRET_FILE; without one a
# program runs an open cluster, as before (docs/design.md, "A closed cluster").
SECRET_FILE_VAR = "COWFLEET_SECRET_FILE"


class SecretError(ValueError):
    """The configured secret file cannot be used."""


def secret_file() -> Path | None:
    """``$COWFLEET_SECRET_FILE``, or None (an open cluster)."""
    value = os.environ.get(SECRET_FILE_VAR, "").strip()
    return Path(value) if value else None


_secret_cache: dict[tuple, bytes] = {}


def cluster_secret() -> bytes | None:
    """The cluster secret (the file's content, surrounding blanks stripped),
    or None when no secret file is configured. Read once per file version
    (every P2P call asks). Refuses a file that others may read."""
    path = secret_file()
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError as exc:
        raise SecretError(f"{SECRET_FILE_VAR}: cannot read {path}: {exc.strerror}") from None
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise SecretError(f"{SECRET_FILE_VAR}: {path} is readable by others "
                          f"(mode {stat.S_IMODE(st.st_mode):04o}): chmod 600 it")
    key = (str(path), st.st_ino, st.st_mtime_ns, st.st_size)
    value = _secret_cache.get(key)
    if value is None:
        value = path.read_bytes().strip()
        if len(value) < 16:
            raise SecretError(f"{SECRET_FILE_VAR}: {path} holds {len(value)} bytes; a secret needs 16 or more")
        _secret_cache.clear()
        _secret_cache[key] = value
    return value


def write_secret(path: Path, value: str | None = None) -> Path:
    """Write ``value`` (default: a new random secret) to ``path``, mode 0600
    from its creation on (never readable by others, not even for a moment)."""
    value = value if value is not None else secrets.token_urlsafe(32)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(value + "\n")
    os.replace(tmp, path)
    return path


# Every environment variable a cowfleet program reads, and what for: the
# programs' --help lists them from here (cowfleet-agent: AGENT_ENVIRONMENT).
AGENT_ENVIRONMENT = {
    "COWFLEET_LOG_LEVEL": "the default of --log-level",
    SECRET_FILE_VAR: "the cluster secret's file (mode 0600): ZooKeeper ACLs and P2P signatures (unset: open)",
    "COWFLEET_VIRT_TYPE": "kvm or qemu: skip the probe of --virt-type auto",
    "COWFLEET_TGT_CONTROL_PORT": "storage: the management channel of the tgtd to use (default: the machine's, 0)",
    "COWFLEET_TGT_LOCK": "storage: the lock file serialising tgtadm calls (default /run/lock/cowfleet-tgt.lock)",
    "COWFLEET_FAULT_PAUSE": "tests: a file whose presence stops the agent at fault points (cowfleet/faults.py)",
    "COWFLEET_PLACEMENT_CHUNK_BYTES": "compute: the size a placement transaction stays under (default 262144)",
    "COWFLEET_PARALLEL_RESTORES": "compute: warm-clone restores run at once (default: the host's CPUs)",
    "COWFLEET_WARM_SPARES": "compute: the default of --warm-spares (warm-clone spares per template)",
}


# What the CLI reads from its environment (``cowfleet --help`` lists it).
CLI_ENVIRONMENT = {
    "COWFLEET_ENDPOINT": "the service's URL when --endpoint is not given (else the lab's env file)",
    "COWFLEET_TOKEN": "the bearer token when --token is not given (else the lab's env file)",
    "COWFLEET_LAB_DIR": f"the lab's folder (default {LAB_DIR_DEFAULT})",
    "COWFLEET_ZK": "ZooKeeper for 'serve' and the token bootstrap ('token ... --zk')",
    "COWFLEET_TOKENS_FILE": "'serve': a file of 'TOKEN ROLE' lines",
    SECRET_FILE_VAR: "'serve', '--zk' commands: the cluster secret's file, mode 0600 (unset: an open cluster)",
    "COWFLEET_CACHE_DIR": "where 'image build-debian' keeps its image (default /var/cache/cowfleet)",
    "COWFLEET_DEBIAN_SOURCES": "'image build-debian': an apt sources file (default: the host's)",
    "COWFLEET_DEBUG": "1: show the traceback of an unexpected error",
}


def environment_help(variables: dict[str, str]) -> str:
    """An argparse epilog listing ``variables``."""
    width = max(map(len, variables))
    return "environment:\n" + "\n".join(f"  {k:<{width}}  {v}" for k, v in variables.items())
