"""Schema pieces shared by every resource."""
from __future__ import annotations

import base64
import binascii
import struct

from marshmallow import Schema, ValidationError, fields, validate
from marshmallow import RAISE

from cowfleet.models import iso
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


class Timestamp(fields.DateTime):
    """Epoch seconds in ZooKeeper, RFC 3339 UTC on the wire (documented as a
    date-time string); output only."""

    def _serialize(self, value, attr, obj, **kw):
        return iso(value)


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
