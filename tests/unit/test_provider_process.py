"""The provider process as Terraform meets it: one handshake line, gRPC over TLS,
the tfplugin5 Provider service, Shutdown; and how long a launch takes."""
from __future__ import annotations

import base64
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from cowfleet.provider import tfplugin5_pb2 as pb
from cowfleet.provider.main import MAGIC_COOKIE, server_certificate
from cowfleet.provider.values import decode, encode

EXE = Path(sys.executable).parent / "terraform-provider-cowfleet"


@pytest.fixture(scope="module")
def client_cert():
    return server_certificate()                 # (key PEM, cert PEM, DER): Terraform's side


def launch(client_cert, **env):
    key, cert, _ = client_cert
    env = dict(os.environ, TF_PLUGIN_MAGIC_COOKIE=MAGIC_COOKIE, PLUGIN_CLIENT_CERT=cert.decode(),
               PLUGIN_PROTOCOL_VERSIONS="5,6", **env)
    t0 = time.monotonic()
    proc = subprocess.Popen([str(EXE)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    line = proc.stdout.readline().strip()
    return proc, line, time.monotonic() - t0


def channel(line: str, client_cert):
    core, app, network, address, protocol, cert_b64 = line.split("|")
    assert (core, app, network, protocol) == ("1", "5", "unix", "grpc")
    der = base64.b64decode(cert_b64 + "=" * (-len(cert_b64) % 4))
    creds = grpc.ssl_channel_credentials(root_certificates=ssl.DER_cert_to_PEM_cert(der).encode(),
                                         private_key=client_cert[0], certificate_chain=client_cert[1])
    return grpc.secure_channel(f"unix:{address}", creds,
                               options=[("grpc.ssl_target_name_override", "localhost")]), Path(address)


def call(ch, service: str, method: str, request, response_cls):
    return ch.unary_unary(f"/{service}/{method}", request_serializer=lambda m: m.SerializeToString(),
                          response_deserializer=response_cls.FromString)(request, timeout=10)


def test_refuses_to_run_outside_terraform():
    env = {k: v for k, v in os.environ.items() if k != "TF_PLUGIN_MAGIC_COOKIE"}
    proc = subprocess.run([str(EXE)], capture_output=True, text=True, env=env, timeout=30)
    assert proc.returncode == 1 and proc.stdout == ""
    assert "cowfleet terraform install" in proc.stderr


def test_handshake_schema_configure_and_shutdown(client_cert):
    proc, line, _ = launch(client_cert)
    try:
        ch, sock = channel(line, client_cert)
        assert oct(sock.parent.stat().st_mode & 0o777) == "0o700"
        schema = call(ch, "tfplugin5.Provider", "GetSchema", pb.GetProviderSchema.Request(),
                      pb.GetProviderSchema.Response)
        assert set(schema.resource_schemas) == {"cowfleet_image", "cowfleet_flavor", "cowfleet_instance_group"}
        assert set(schema.data_source_schemas) == {"cowfleet_image", "cowfleet_nodes"}

        from cowfleet.provider import schema as S
        config = pb.DynamicValue(msgpack=encode({"endpoint": "http://127.0.0.1:9", "token": "t"},
                                                S.PROVIDER.type()))
        resp = call(ch, "tfplugin5.Provider", "Configure", pb.Configure.Request(config=config),
                    pb.Configure.Response)
        assert resp.diagnostics[0].summary == "cannot reach the cowfleet service at http://127.0.0.1:9"
        assert resp.diagnostics[0].attribute.steps[0].attribute_name == "endpoint"

        plan = call(ch, "tfplugin5.Provider", "PlanResourceChange", pb.PlanResourceChange.Request(
            type_name="cowfleet_flavor", prior_state=pb.DynamicValue(msgpack=encode(None, S.FLAVOR.type())),
            proposed_new_state=pb.DynamicValue(msgpack=encode({"name": "f", "vcpus": 1, "memory_mib": 128},
                                                              S.FLAVOR.type()))), pb.PlanResourceChange.Response)
        planned = decode(plan.planned_state.msgpack)
        assert planned["disk_gib"] == 1 and planned["id"] == "f"

        ch.unary_unary("/plugin.GRPCController/Shutdown")(b"", timeout=10)
        assert proc.wait(timeout=10) == 0
        assert not sock.parent.exists(), "the socket folder is removed on exit"
        assert proc.stdout.read() == "", "nothing but the handshake line on stdout"
    finally:
        proc.kill()
        proc.wait()


def test_launch_time(client_cert):
    """Terraform starts the provider 3 times per plan, 4 per apply: keep it short."""
    times = []
    for _ in range(5):
        proc, line, took = launch(client_cert)
        proc.terminate()
        assert proc.wait(timeout=10) == 0          # SIGTERM: clean exit, socket folder removed
        assert not Path(line.split("|")[3]).parent.exists()
        times.append(took)
    median = sorted(times)[2]
    print(f"\nprovider launch to handshake: median {median * 1000:.0f} ms, min {min(times) * 1000:.0f} ms")
    # ~0.3 s here: a figure, not a threshold (a busy CI machine is no benchmark)


def test_every_rpc_failure_is_a_diagnostic_and_requests_name_the_provider():
    """Malformed prior state (an exception inside an RPC) comes back as an
    error diagnostic, not a raw gRPC error; the User-Agent names the provider
    and the Terraform that runs it."""
    from cowfleet import __version__
    from cowfleet.provider.server import Provider, guarded, user_agent
    upgrade = guarded(Provider().UpgradeResourceState, pb.UpgradeResourceState.Response)
    resp = upgrade(pb.UpgradeResourceState.Request(type_name="cowfleet_flavor", raw_state=pb.RawState(json=b"{not json")),
                   None)
    (diag,) = resp.diagnostics
    assert diag.severity == pb.Diagnostic.ERROR and "JSONDecodeError" in diag.summary
    resp = guarded(Provider().ImportResourceState, pb.ImportResourceState.Response)(
        pb.ImportResourceState.Request(type_name="cowfleet_nosuch", id="x"), None)
    assert "KeyError" in resp.diagnostics[0].summary
    assert user_agent("1.0.3") == f"terraform-provider-cowfleet/{__version__} terraform/1.0.3"
    assert user_agent() == f"terraform-provider-cowfleet/{__version__}"
