"""The rules of what a client may write (bottom layer): the marshmallow
schemas of the API's input specs (flavor, image, instance group) and the
field rules they share (names, labels, SSH keys, strict booleans).

The service loads every PUT/PATCH body with them (service/*/schemas.py adds
the output schemas), and the Terraform provider runs the same schemas on a
configuration's known values at plan, so a value the API would refuse is a
diagnostic before any call. Nothing here imports Flask or the service.
"""
from __future__ import annotations

import base64
import binascii
import struct
from urllib.parse import urlparse

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from cowfleet import defaults
from cowfleet.names import NAME_RE, NAME_RULE

Name = lambda **kw: fields.Str(validate=validate.Regexp(NAME_RE, error=NAME_RULE), **kw)  # noqa: E731


# Label keys and values as Kubernetes spells them: a key is 1-63 letters,
# digits, '-', '_', '.' and '/', starting and ending alphanumeric (so never '='
# or a space, which would make ``?label=k=v`` ambiguous); a value is up to 255
# printable characters. At most 64 labels an object.
LABEL_KEY_RE = r"^[A-Za-z0-9]([A-Za-z0-9_./-]{0,61}[A-Za-z0-9])?$"
MAX_LABELS = 64


def _printable(value: str) -> None:
    if not value.isprintable():
        raise ValidationError("must hold printable characters only")


def _label_count(labels: dict) -> None:
    if len(labels) > MAX_LABELS:
        raise ValidationError(f"at most {MAX_LABELS} labels")


def Labels(**kw):
    return fields.Dict(keys=fields.Str(validate=validate.Regexp(
                           LABEL_KEY_RE, error="a label key is 1-63 letters, digits, '-', '_', '.' or '/', "
                                               "starting and ending with a letter or digit")),
                       values=fields.Str(validate=[validate.Length(0, 255), _printable]),
                       validate=_label_count, **kw)


class StrictBool(fields.Boolean):
    """JSON true or false, nothing else (marshmallow also takes "yes", 1, "off")."""

    def _deserialize(self, value, attr, data, **kw):
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


class StrictSchema(Schema):
    """Input schemas reject unknown fields (contract: unknown fields -> 422)."""

    class Meta:
        unknown = RAISE


def require_positive_or_none(value):
    if value is not None and value < 1:
        raise ValidationError("must be at least 1")


# OpenSSH public key types cloud-init installs (ssh-keygen -t ...; FIDO keys too)
SSH_KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
                 "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com", "ssh-dss")
MAX_SSH_KEYS = 32
MAX_SSH_KEY_LENGTH = 16384


def _ssh_public_key(value: str) -> None:
    """One line of authorized_keys without options: TYPE BASE64 [COMMENT],
    where the base64 blob really is a key of that type (its first field
    names the type again), so a pasted private key or a typo is refused."""
    if len(value) > MAX_SSH_KEY_LENGTH:
        raise ValidationError(f"an SSH public key is at most {MAX_SSH_KEY_LENGTH} characters")
    if not value.isprintable() or "\n" in value:
        raise ValidationError("an SSH public key is one line of printable characters")
    parts = value.split(None, 2)
    if len(parts) < 2 or parts[0] not in SSH_KEY_TYPES:
        raise ValidationError("not an OpenSSH public key: expected 'TYPE BASE64 [COMMENT]' with TYPE one of "
                              + ", ".join(SSH_KEY_TYPES))
    try:
        blob = base64.b64decode(parts[1], validate=True)
        (n,) = struct.unpack(">I", blob[:4])
        embedded = blob[4:4 + n].decode()
    except (binascii.Error, struct.error, UnicodeDecodeError, ValueError):
        raise ValidationError("not an OpenSSH public key: the key data is not valid base64 of a key") from None
    if embedded != parts[0]:
        raise ValidationError(f"not an OpenSSH public key: the key data is a '{embedded[:40]}' key, "
                              f"not '{parts[0]}'")


def SshKeys(**kw):
    return fields.List(fields.Str(validate=_ssh_public_key),
                       validate=validate.Length(max=MAX_SSH_KEYS,
                                                error=f"at most {MAX_SSH_KEYS} keys"), **kw)


# -- flavors ------------------------------------------------------------------

class FlavorSpecSchema(StrictSchema):
    vcpus = fields.Int(required=True, strict=True, validate=validate.Range(1, 256))
    memory_mib = fields.Int(required=True, strict=True, validate=validate.Range(64, 4 * 1024 * 1024))
    disk_gib = fields.Int(load_default=1, strict=True, validate=validate.Range(1, 65536))


# -- images -------------------------------------------------------------------

SOURCE_SCHEMES = ("file", "http", "https")


def _valid_source(url: str) -> None:
    if not url.isprintable():
        raise ValidationError("must hold printable characters only")
    try:
        parsed = urlparse(url)
        parsed.port                    # raises on a port that is not a number
    except ValueError as exc:          # e.g. "Invalid IPv6 URL"
        raise ValidationError(f"not a valid URL: {exc}") from None
    if parsed.scheme not in SOURCE_SCHEMES:
        raise ValidationError(f"scheme must be one of {', '.join(SOURCE_SCHEMES)}")
    if parsed.scheme == "file" and (parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/")):
        raise ValidationError("a file URL names an absolute path on the storage node: file:///path")
    if parsed.scheme != "file" and not parsed.netloc:
        raise ValidationError("an http(s) URL needs a host")


class ImageSpecSchema(StrictSchema):
    source_url = fields.Str(allow_none=True, load_default=None,
                            validate=[validate.Length(max=2048), _valid_source])
    format = fields.Str(load_default="raw", validate=validate.OneOf(["raw", "qcow2"]))
    min_replicas = fields.Int(load_default=defaults.MIN_REPLICAS, strict=True, validate=validate.Range(1, 16))
    labels = Labels(load_default=dict)


# -- instance groups ----------------------------------------------------------

MAX_GROUP_SIZE = 10_000


class PlacementSchema(StrictSchema):
    strategy = fields.Str(load_default=defaults.STRATEGY, validate=validate.OneOf(defaults.STRATEGIES))
    max_per_node = fields.Int(load_default=defaults.MAX_PER_NODE, allow_none=True, strict=True,
                              validate=validate.Range(1, MAX_GROUP_SIZE))


class UpdatePolicySchema(StrictSchema):
    max_unavailable = fields.Int(load_default=defaults.MAX_UNAVAILABLE, strict=True,
                                 validate=validate.Range(0, MAX_GROUP_SIZE))
    max_surge = fields.Int(load_default=defaults.MAX_SURGE, strict=True, validate=validate.Range(0, MAX_GROUP_SIZE))

    @validates_schema
    def _can_progress(self, data, **kw):
        if data.get("max_unavailable") == 0 and data.get("max_surge") == 0:
            raise ValidationError("max_unavailable and max_surge cannot both be 0: "
                                  "a rolling update could never replace an instance", "max_unavailable")


class GroupSpecSchema(StrictSchema):
    image = Name(required=True)
    flavor = Name(required=True)
    size = fields.Int(required=True, strict=True, validate=validate.Range(0, MAX_GROUP_SIZE))
    placement = fields.Nested(PlacementSchema, load_default=lambda: PlacementSchema().load({}))
    user_data = fields.Str(load_default=None, allow_none=True, validate=validate.Length(max=65536), metadata={
        "description": "handed to every instance verbatim as the NoCloud seed's user-data (a #cloud-config "
                       "document, a #! script, a MIME multipart); at most 65536 characters"})
    ssh_authorized_keys = SshKeys(load_default=list, metadata={
        "description": "OpenSSH public keys ('TYPE BASE64 [COMMENT]', at most 32): in the seed's meta-data "
                       "as public-keys, which cloud-init installs for the image's default user; with no "
                       "user_data, user-data is a #cloud-config holding them as ssh_authorized_keys"})
    labels = Labels(load_default=dict)
    update_policy = fields.Nested(UpdatePolicySchema, load_default=lambda: UpdatePolicySchema().load({}))
    persistent = StrictBool(load_default=False, metadata={
        "description": "keep each instance's overlay across restarts of its domain and of the agent "
                       "(the exception: instances are ephemeral by default, a restart starts from the "
                       "master again); an overlay is removed when its instance is deleted"})
    ready_timeout = fields.Int(load_default=defaults.READY_TIMEOUT, strict=True,
                               validate=validate.Range(defaults.READY_TIMEOUT_MIN, defaults.READY_TIMEOUT_MAX),
                               metadata={"description": (
                                   "seconds an instance has, from its domain's start, to print its readiness "
                                   "line; after that it is failed with reason ReadyTimeout and its domain "
                                   f"stopped (default {defaults.READY_TIMEOUT}, from "
                                   f"{defaults.READY_TIMEOUT_MIN} to {defaults.READY_TIMEOUT_MAX})")})
    start = fields.Str(load_default=defaults.START, validate=validate.OneOf(defaults.STARTS), metadata={
        "description": "how instances start: boot (a cold boot: the default), clone (restored from a "
                       "warm-clone template of the image and flavor that the node makes on first use, then "
                       "given their own NIC and NoCloud seed; a cold boot when that fails, and the instance "
                       "says why), auto (a clone where the node has or can make a template, else a boot); "
                       "a clone needs an image whose guest waits for its seed (design.md, Warm clones)"})
