"""What every kind of lab keeps in its folder (the one-node lab, lab.py, and
the racks lab, racks.py, share it), and how a lab reports progress."""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable


def say(progress: Callable[[str], None] | None, text: str) -> None:
    if progress:
        progress(text)


class LabFiles:
    """What every kind of lab keeps in its folder: ``lab.json`` (its state,
    ``self.state``, a dataclass) and ``env`` (endpoint and token for the CLI)."""
    dir: Path
    state: object

    @property
    def state_file(self) -> Path:
        return self.dir / "lab.json"

    @property
    def env_file(self) -> Path:
        return self.dir / "env"

    def _save(self) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self.state), indent=2))
        os.replace(tmp, self.state_file)

    def _step(self, progress, name: str, fn: Callable[[], object]) -> None:
        t0 = time.monotonic()
        fn()
        say(progress, f"  {name:<18} ok  ({time.monotonic() - t0:.1f}s)")
