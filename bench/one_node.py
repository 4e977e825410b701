"""What the benches on a real one-node lab share (bench/clone.py,
bench/instance_network.py): their common flags, and the lab itself -- a
fresh folder under /var/tmp, the demo guest image built and registered
(one replica), the lab taken down and the folder removed on the way out,
whatever the way (``bench.cleanup.unwind_on_signals``).
"""
from __future__ import annotations

import argparse
import contextlib
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from bench.cleanup import unwind_on_signals

from cowfleet.client import Client
from cowfleet.guest.builder import build_demo_image
from cowfleet.lab.lab import Lab


def arguments(doc: str, size: int, repeat: int) -> argparse.ArgumentParser:
    """``--size`` and ``--repeat`` (defaults the bench's), ``--json``; the
    bench adds its own before parsing."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--size", type=int, default=size)
    p.add_argument("--repeat", type=int, default=repeat)
    p.add_argument("--json", help="write the figures here")
    return p


@dataclass
class OneNodeLab:
    work: Path          # the run's folder (the bench may put files of its own here)
    lab: Lab
    client: Client
    image: Path         # the demo image's raw file, registered as image "demo"


@contextlib.contextmanager
def demo_lab(prefix: str) -> Iterator[OneNodeLab]:
    """A one-node lab in a new folder ``/var/tmp/<prefix>...`` with image
    "demo" available."""
    work = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    work.chmod(0o755)
    lab = Lab(work / "lab")
    unwind_on_signals()   # SIGTERM, SIGHUP, SIGINT: the finally below runs
    try:
        print(f"building the demo image and starting a one-node lab in {work}", flush=True)
        image = build_demo_image(work / "demo.raw")
        lab.up()
        client = Client(lab.state.endpoint, lab.state.token)
        client.put_image("demo", source_url=f"file://{image}", format="raw", min_replicas=1)
        while client.get_image("demo")["status"] != "available":
            time.sleep(0.2)
        yield OneNodeLab(work, lab, client, image)
    finally:
        try:
            lab.down()
        finally:
            # the rest goes even if taking the lab down failed; the lab's own
            # folder then stays (its state names what still runs, for a
            # second `lab down`), and so does the run's folder around it
            for f in work.iterdir():
                if f.is_dir() and f != lab.dir:
                    shutil.rmtree(f, ignore_errors=True)
                elif not f.is_dir():
                    f.unlink()
            with contextlib.suppress(OSError):
                work.rmdir()
