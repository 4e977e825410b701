"""SHA-256, the one way cowfleet checks image data (bottom layer): the rule
for a digest as users write it and as cowfleet stores it, and the digest of
a file (the CLI and the provider before an upload, the storage agent for a
master it finds without a sidecar)."""
from __future__ import annotations

import hashlib
import os
import re

# A digest as users may write it (either case; the API and the Terraform
# provider accept both) ...
SHA256_PATTERN = r"[0-9a-fA-F]{64}"
# ... and as cowfleet stores and compares it: lower case
SHA256_RE = re.compile(r"^[0-9a-f]{64}\Z")
SHA256_RULE = "must be 64 hexadecimal digits (the SHA-256 of the data)"


def is_sha256(text: object) -> bool:
    """64 hexadecimal digits, in either case."""
    return isinstance(text, str) and re.fullmatch(SHA256_PATTERN, text) is not None


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The hex SHA-256 of a file, read ``chunk`` bytes at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
