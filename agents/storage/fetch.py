"""Where a copy's bytes come from: the image's ``source_url`` (``file://``
or HTTP), or a peer storage agent's P2P ``GET /v1/images/NAME/data``.
Each reader hands the bytes, in chunks, to ``store(chunks)``, which writes,
checks and publishes the copy (the agent's)."""
from __future__ import annotations

import logging
import urllib.parse
from typing import Callable, Iterable

import requests

from cowfleet import p2p
from cowfleet.agents.storage.copy_store import CHUNK
from cowfleet.models import Image, NodeInfo
from cowfleet.protocol import image_data_path

Store = Callable[[Iterable[bytes]], object]


def from_source(image: Image, store: Store) -> None:
    url = urllib.parse.urlparse(image.source_url)
    if url.scheme == "file":
        with open(urllib.parse.unquote(url.path), "rb") as src:
            store(iter(lambda: src.read(CHUNK), b""))
    else:
        with requests.get(image.source_url, stream=True, timeout=30) as resp:
            resp.raise_for_status()
            store(resp.iter_content(CHUNK))


def from_peers(image: Image, peers: list[str], me: str, member: Callable[[str], NodeInfo | None],
               store: Store, log: logging.Logger) -> None:
    """Copy an uploaded image from the first of ``peers`` (storage agents
    that hold it) that serves it (its checksum, recorded at upload, is what
    the copy must match)."""
    errors = []
    for peer in peers:
        node = member(peer)
        if node is None or not node.address or peer == me:
            continue
        url = node.address + image_data_path(image.name)
        try:
            with p2p.session().get(url, stream=True, timeout=30) as resp:      # signed: a peer's data route
                resp.raise_for_status()
                store(resp.iter_content(CHUNK))
            log.info("replicated %s from %s", image.name, peer)
            return
        except (requests.RequestException, ValueError) as exc:
            errors.append(f"{peer}: {exc}")
    raise RuntimeError("; ".join(errors) or "no reachable peer holds a copy")
