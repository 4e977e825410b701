"""Schema pieces of the service's answers (the input rules are in cowfleet/specs.py)."""
from __future__ import annotations

from marshmallow import fields

from cowfleet.models import iso


class Timestamp(fields.DateTime):
    """Epoch seconds in ZooKeeper, RFC 3339 UTC on the wire (documented as a
    date-time string); output only."""

    def _serialize(self, value, attr, obj, **kw):
        return iso(value)
