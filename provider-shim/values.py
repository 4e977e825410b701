"""Terraform values <-> Python values.

Terraform sends and expects every value as a msgpack-encoded ``DynamicValue``
whose layout is fixed by the schema's type: an object is a map holding every
attribute (null ones too), a list an array, a map a map, numbers are ints or
floats, and a value not known until apply is msgpack extension type 0.

Python side: ``None`` is null, ``UNKNOWN`` is an unknown value, objects and
maps are dicts, lists are lists. ``conform`` fills in what the schema says
and Python code left out, so resource code can return partial dicts.
"""
from __future__ import annotations

import json
from typing import Any

import msgpack


class _Unknown:
    """A value Terraform will only know after apply."""
    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNKNOWN"

    def __bool__(self) -> bool:
        return False


UNKNOWN = _Unknown()
# cty's own encoding of an unknown value: fixext1, type 0, one zero byte
_UNKNOWN_EXT = msgpack.ExtType(0, b"\x00")


def _default(obj):
    if obj is UNKNOWN:
        return _UNKNOWN_EXT
    raise TypeError(f"cannot encode {type(obj).__name__} for Terraform")


def _ext_hook(code: int, data: bytes):
    if code == 0:
        return UNKNOWN
    raise ValueError(f"unexpected msgpack extension type {code} from Terraform")


def encode(value: Any, type_: Any) -> bytes:
    return msgpack.packb(conform(value, type_), default=_default, use_bin_type=True)


def decode(data: bytes) -> Any:
    if not data:
        return None
    return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)


def decode_dynamic(dv) -> Any:
    """A DynamicValue message (msgpack, or JSON as in some state upgrades)."""
    if dv is None:
        return None
    if dv.msgpack:
        return decode(dv.msgpack)
    if dv.json:
        return json.loads(dv.json)
    return None


def conform(value: Any, type_: Any) -> Any:
    """Shape ``value`` to the cty type ``type_`` (as in the schema's JSON type).

    Missing object attributes become null, numbers that came back as strings
    or floats with integral values become ints, bools stay bools.
    """
    if value is None or value is UNKNOWN:
        return value
    if isinstance(type_, str):
        if type_ == "string":
            return value if isinstance(value, str) else str(value)
        if type_ == "number":
            if isinstance(value, bool):
                return int(value)
            if isinstance(value, str):
                value = float(value)
            if isinstance(value, float) and value.is_integer():
                return int(value)
            return value
        if type_ == "bool":
            return bool(value)
        if type_ == "dynamic":
            return value
        raise ValueError(f"unknown primitive type {type_!r}")
    kind, inner = type_
    if kind in ("list", "set"):
        return [conform(v, inner) for v in value]
    if kind == "map":
        return {str(k): conform(v, inner) for k, v in value.items()}
    if kind == "object":
        return {name: conform(value.get(name), t) for name, t in inner.items()}
    raise ValueError(f"unknown collection type {kind!r}")


def has_unknown(value: Any) -> bool:
    if value is UNKNOWN:
        return True
    if isinstance(value, dict):
        return any(has_unknown(v) for v in value.values())
    if isinstance(value, list):
        return any(has_unknown(v) for v in value)
    return False
