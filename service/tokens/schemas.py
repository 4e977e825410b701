from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from cowfleet.service.fields import Timestamp
from cowfleet.specs import Name, StrictSchema
from cowfleet.tokens import ROLES

MAX_TTL = 10 * 365 * 86400      # ten years: longer is "never", say so with no expiry


class TokenSpecSchema(StrictSchema):
    role = fields.Str(load_default="reader", validate=validate.OneOf(ROLES))
    expires_at = fields.AwareDateTime(load_default=None, allow_none=True, metadata={
        "description": "when the token stops being valid (RFC 3339 with a zone); absent: never"})
    ttl = fields.Int(load_default=None, allow_none=True, strict=True, validate=validate.Range(1, MAX_TTL),
                     metadata={"description": "seconds from now until the token stops being valid "
                                              "(instead of expires_at)"})

    @validates_schema
    def _one_expiry(self, data, **kw):
        if data.get("expires_at") is not None and data.get("ttl") is not None:
            raise ValidationError("give expires_at or ttl, not both", "ttl")


class TokenCreateSchema(TokenSpecSchema):
    """POST /v1/tokens: the name travels in the body."""
    name = Name(required=True)


class TokenSchema(Schema):
    name = fields.Str(required=True)
    role = fields.Str(required=True, validate=validate.OneOf(ROLES))
    created_at = Timestamp(required=True)
    expires_at = Timestamp(required=True, allow_none=True)
    expired = fields.Bool(required=True)
    last_used = Timestamp(required=True, allow_none=True, metadata={
        "description": "when a request last used it (updated at most once a minute); null: never"})
    etag = fields.Str(required=True)


class TokenCreatedSchema(TokenSchema):
    token = fields.Str(required=True, metadata={
        "description": "the bearer token: shown in this answer only (the service keeps its SHA-256)"})
