"""What every kind of lab keeps in its folder (the one-node lab, lab.py, and
the racks lab, racks.py, share it), and how a lab reports progress."""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from cowfleet.config import SECRET_FILE_VAR, cluster_secret, secret_file, write_secret


def say(progress: Callable[[str], None] | None, text: str) -> None:
    if progress:
        progress(text)


class LabFiles:
    """What every kind of lab keeps in its folder: ``lab.json`` (its state,
    ``self.state``, a dataclass), ``env`` (endpoint and token for the CLI)
    and ``secret`` (the cluster secret, 0600; never in ``lab.json`` nor in
    what ``status`` prints)."""
    dir: Path
    state: object

    @property
    def state_file(self) -> Path:
        return self.dir / "lab.json"

    @property
    def env_file(self) -> Path:
        return self.dir / "env"

    @property
    def secret_file(self) -> Path:
        return self.dir / "secret"

    def _make_secret(self) -> Path:
        """The lab's cluster secret: the configured one ($COWFLEET_SECRET_FILE)
        when there is one (a test session's, an operator's), else a new one --
        also when the configured file is this lab's own, from a shell that
        sourced the ``env`` of an earlier lab here (gone with it)."""
        configured = secret_file()
        if configured is not None and os.path.abspath(configured) == os.path.abspath(self.secret_file):
            configured = None
        value = cluster_secret() if configured is not None else None
        return write_secret(self.secret_file, value.decode() if value else None)

    def secret_env(self) -> dict[str, str]:
        """The environment that gives a program the lab's secret."""
        return dict(os.environ, **{SECRET_FILE_VAR: str(self.secret_file)})

    def _save(self) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self.state), indent=2))
        os.replace(tmp, self.state_file)

    def _step(self, progress, name: str, fn: Callable[[], object]) -> None:
        t0 = time.monotonic()
        fn()
        say(progress, f"  {name:<18} ok  ({time.monotonic() - t0:.1f}s)")
