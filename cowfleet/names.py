"""The naming rules every component checks the same way (bottom layer).

An object name (image, flavor, group, node) is a DNS label, as the REST API
has always required; the agents, the P2P routes and the OpenAPI document use
this one rule.
"""
from __future__ import annotations

import re

# the bare pattern, for composing (the storage agent's data route); no
# capturing group of its own, so it composes into any regex or route
NAME_PATTERN = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
NAME_RE = re.compile(rf"^{NAME_PATTERN}\Z")  # \Z: no trailing newline
NAME_RULE = "must be a DNS label: 1-63 lowercase letters, digits or '-', not starting or ending with '-'"


def valid_name(text: str | None) -> bool:
    return bool(NAME_RE.match(text or ""))
