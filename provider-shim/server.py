"""The tfplugin5 Provider service: gRPC requests in, ``resources`` calls out.

Each RPC decodes its msgpack DynamicValues, calls plain Python
(``resources.py``), and encodes the answer; a ``ProviderError`` becomes
diagnostics. Registered with grpc's generic handlers (no generated
``_pb2_grpc`` module: the method table below is all it needs).

``resources`` and the HTTP client are imported on first use, not at the top:
Terraform starts the provider 3-5 times a command and a launch that only
answers GetProviderSchema needs neither (start-up time, main.py).
"""
from __future__ import annotations

import json
import logging
import os
import sys

from cowfleet.provider import schema as S
from cowfleet.provider import tfplugin5_pb2 as pb
from cowfleet.provider.diagnostics import Diag, ProviderError
from cowfleet.provider.values import UNKNOWN, decode_dynamic, encode

log = logging.getLogger("cowfleet.provider")


def diag_proto(d: Diag):
    out = pb.Diagnostic(severity=getattr(pb.Diagnostic, d.severity), summary=d.summary, detail=d.detail)
    if d.path:
        out.attribute.CopyFrom(attribute_path(d.path))
    return out


def attribute_path(path: list):
    ap = pb.AttributePath()
    for step in path:
        if isinstance(step, int):
            ap.steps.add(element_key_int=step)
        elif isinstance(step, tuple):
            ap.steps.add(element_key_string=step[1])
        else:
            ap.steps.add(attribute_name=step)
    return ap


def _dv(value, block: S.Block):
    return pb.DynamicValue(msgpack=encode(value, block.type()))


def _unexpected(exc: Exception) -> list:
    log.exception("provider error")
    return [diag_proto(Diag(f"cowfleet provider: {type(exc).__name__}", str(exc)))]


class Provider:
    """The servicer. ``client`` is set by Configure."""

    def __init__(self):
        self.client = None
        self._resources = None
        self._data = None

    @property
    def resources(self):
        if self._resources is None:
            from cowfleet.provider import resources
            self._resources, self._data = resources.RESOURCES, resources.DATA_SOURCES
        return self._resources

    @property
    def data_sources(self):
        self.resources
        return self._data

    # -- schema and configuration --------------------------------------------
    def GetSchema(self, request, context):
        resp = pb.GetProviderSchema.Response(provider=S.to_proto(pb, S.PROVIDER))
        for name, block in S.RESOURCES.items():
            resp.resource_schemas[name].CopyFrom(S.to_proto(pb, block))
        for name, block in S.DATA_SOURCES.items():
            resp.data_source_schemas[name].CopyFrom(S.to_proto(pb, block))
        return resp

    def PrepareProviderConfig(self, request, context):
        return pb.PrepareProviderConfig.Response(prepared_config=request.config)

    def Configure(self, request, context):
        config = decode_dynamic(request.config) or {}
        try:
            self.client = configure(config, request.terraform_version)
        except ProviderError as exc:
            return pb.Configure.Response(diagnostics=[diag_proto(d) for d in exc.diags])
        return pb.Configure.Response()

    def ValidateResourceTypeConfig(self, request, context):
        config = decode_dynamic(request.config) or {}
        diags = self.resources[request.type_name].validate(config)
        return pb.ValidateResourceTypeConfig.Response(diagnostics=[diag_proto(d) for d in diags])

    def ValidateDataSourceConfig(self, request, context):
        return pb.ValidateDataSourceConfig.Response()

    def UpgradeResourceState(self, request, context):
        block = S.RESOURCES[request.type_name]
        raw = request.raw_state
        state = json.loads(raw.json) if raw.json else dict(raw.flatmap) or None
        return pb.UpgradeResourceState.Response(upgraded_state=_dv(state, block))

    def Stop(self, request, context):
        # every wait and upload ends at once (resources.pause): answered in
        # milliseconds however many applies wait, since the gRPC pool has a
        # thread for it (main.py)
        stop()
        return pb.Stop.Response()

    # -- managed resources ---------------------------------------------------
    def _need_client(self):
        if self.client is None:
            raise ProviderError([Diag("the cowfleet provider is not configured",
                                      "set endpoint and token in the provider block or "
                                      "COWFLEET_ENDPOINT / COWFLEET_TOKEN")])
        return self.client

    def ReadResource(self, request, context):
        block = S.RESOURCES[request.type_name]
        state = decode_dynamic(request.current_state)
        try:
            new = None if state is None else self.resources[request.type_name].read(self._need_client(), state)
        except ProviderError as exc:
            return pb.ReadResource.Response(new_state=request.current_state,
                                            diagnostics=[diag_proto(d) for d in exc.diags])
        except Exception as exc:  # noqa: BLE001 - reported to Terraform, not swallowed
            return pb.ReadResource.Response(new_state=request.current_state, diagnostics=_unexpected(exc))
        return pb.ReadResource.Response(new_state=_dv(new, block), private=request.private)

    def PlanResourceChange(self, request, context):
        block = S.RESOURCES[request.type_name]
        prior = decode_dynamic(request.prior_state)
        proposed = decode_dynamic(request.proposed_new_state)
        config = decode_dynamic(request.config)
        resource = self.resources[request.type_name]
        try:
            planned, replace = resource.plan(prior, proposed, config)
        except ProviderError as exc:
            return pb.PlanResourceChange.Response(diagnostics=[diag_proto(d) for d in exc.diags])
        except Exception as exc:  # noqa: BLE001
            return pb.PlanResourceChange.Response(diagnostics=_unexpected(exc))
        # a timeouts-only difference is planned as no change, as SDKv2 plans it; that
        # plan does not match the configuration's timeouts, which Terraform accepts
        # (with a log line) only from a provider flagged as the legacy SDK
        return pb.PlanResourceChange.Response(planned_state=_dv(planned, block),
                                              requires_replace=[attribute_path(p) for p in replace],
                                              planned_private=request.prior_private,
                                              legacy_type_system=resource.keeps_prior_timeouts(planned, config))

    def ApplyResourceChange(self, request, context):
        block = S.RESOURCES[request.type_name]
        prior = decode_dynamic(request.prior_state)
        planned = decode_dynamic(request.planned_state)
        try:
            new = self.resources[request.type_name].apply(self._need_client(), prior, planned)
        except ProviderError as exc:
            # what exists stays in the state (tainted on create); nothing made: prior
            kept = exc.state if exc.state is not None else prior
            return pb.ApplyResourceChange.Response(new_state=_dv(kept, block),
                                                   diagnostics=[diag_proto(d) for d in exc.diags])
        except Exception as exc:  # noqa: BLE001
            return pb.ApplyResourceChange.Response(new_state=_dv(prior, block), diagnostics=_unexpected(exc))
        return pb.ApplyResourceChange.Response(new_state=_dv(new, block))

    def ImportResourceState(self, request, context):
        block = S.RESOURCES[request.type_name]
        state = self.resources[request.type_name].import_state(request.id)
        return pb.ImportResourceState.Response(imported_resources=[pb.ImportResourceState.ImportedResource(
            type_name=request.type_name, state=_dv(state, block))])

    def ReadDataSource(self, request, context):
        block = S.DATA_SOURCES[request.type_name]
        config = decode_dynamic(request.config) or {}
        try:
            state = self.data_sources[request.type_name](self._need_client(), config)
        except ProviderError as exc:
            return pb.ReadDataSource.Response(diagnostics=[diag_proto(d) for d in exc.diags])
        except Exception as exc:  # noqa: BLE001
            return pb.ReadDataSource.Response(diagnostics=_unexpected(exc))
        return pb.ReadDataSource.Response(state=_dv(state, block))


def stop() -> None:
    """Terraform was interrupted (the Stop RPC, or SIGINT from a terminal's Ctrl-C)."""
    from cowfleet.provider import resources
    resources.STOP.set()


def user_agent(terraform_version: str = "") -> str:
    """``terraform-provider-cowfleet/0.1.0 terraform/1.0.3``, as SDKv2 providers
    name themselves: the service's access log tells which client wrote what."""
    from cowfleet import __version__
    ua = f"terraform-provider-cowfleet/{__version__}"
    return f"{ua} terraform/{terraform_version}" if terraform_version else ua


def configure(config: dict, terraform_version: str = ""):
    """A checked client: reachable endpoint, accepted token; else diagnostics."""
    endpoint, token = config.get("endpoint"), config.get("token")
    if endpoint is UNKNOWN or token is UNKNOWN:
        raise ProviderError([Diag("endpoint and token must be known before apply",
                                  "they may not depend on resources that are not created yet")])
    import requests
    from cowfleet.client import Client, ConfigError
    try:
        client = Client(endpoint, token, retries=2, user_agent=user_agent(terraform_version))
    except ConfigError as exc:
        if not exc.missing:
            raise ProviderError([Diag("cowfleet provider: endpoint is not a URL",
                                      f"{exc}: give http(s)://HOST:PORT of the service", [exc.field])])
        raise ProviderError([Diag("cowfleet provider: no endpoint or token",
                                  f"{exc}; or set endpoint and token in the provider block", [exc.field])])
    try:
        resp = client.session.get(f"{client.endpoint}/v1/flavors", params={"limit": 1}, timeout=10)
    except requests.RequestException as exc:
        raise ProviderError([Diag(f"cannot reach the cowfleet service at {client.endpoint}",
                                  f"{type(exc).__name__}: {exc}", ["endpoint"])])
    if resp.status_code in (401, 403):
        raise ProviderError([Diag(f"the cowfleet service at {client.endpoint} refused the token",
                                  f"HTTP {resp.status_code}: {resp.text[:300]}", ["token"])])
    if resp.status_code >= 400:
        raise ProviderError([Diag(f"the cowfleet service at {client.endpoint} answered HTTP {resp.status_code}",
                                  resp.text[:300], ["endpoint"])])
    return client


# -- registration with grpc ------------------------------------------------------

_RPCS = {
    "GetSchema": pb.GetProviderSchema, "PrepareProviderConfig": pb.PrepareProviderConfig,
    "ValidateResourceTypeConfig": pb.ValidateResourceTypeConfig,
    "ValidateDataSourceConfig": pb.ValidateDataSourceConfig,
    "UpgradeResourceState": pb.UpgradeResourceState, "Configure": pb.Configure,
    "ReadResource": pb.ReadResource, "PlanResourceChange": pb.PlanResourceChange,
    "ApplyResourceChange": pb.ApplyResourceChange, "ImportResourceState": pb.ImportResourceState,
    "ReadDataSource": pb.ReadDataSource, "Stop": pb.Stop,
}


def guarded(method, response_cls):
    """Every failure reaches Terraform as a diagnostic (malformed prior state,
    an import that fails, a bug), never as a raw gRPC error."""
    def call(request, context):
        try:
            return method(request, context)
        except Exception as exc:  # noqa: BLE001 - reported to Terraform, not swallowed
            if response_cls is pb.Stop.Response:
                return response_cls(Error=f"{type(exc).__name__}: {exc}")
            return response_cls(diagnostics=_unexpected(exc))
    return call


def handlers(grpc, provider: Provider, shutdown) -> list:
    methods = {name: grpc.unary_unary_rpc_method_handler(
        guarded(getattr(provider, name), msg.Response), request_deserializer=msg.Request.FromString,
        response_serializer=msg.Response.SerializeToString) for name, msg in _RPCS.items()}

    def _shutdown(request: bytes, context) -> bytes:
        shutdown()
        return b""                                   # plugin.Empty

    def _health(request: bytes, context) -> bytes:
        return b"\x08\x01"                           # HealthCheckResponse{status: SERVING}

    raw = dict(request_deserializer=None, response_serializer=None)
    return [
        grpc.method_handlers_generic_handler("tfplugin5.Provider", methods),
        grpc.method_handlers_generic_handler(
            "plugin.GRPCController", {"Shutdown": grpc.unary_unary_rpc_method_handler(_shutdown, **raw)}),
        grpc.method_handlers_generic_handler(
            "grpc.health.v1.Health", {"Check": grpc.unary_unary_rpc_method_handler(_health, **raw)}),
    ]


def setup_logging() -> None:
    level = os.environ.get("TF_LOG_PROVIDER") or os.environ.get("TF_LOG")
    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG if level in ("TRACE", "DEBUG") else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
