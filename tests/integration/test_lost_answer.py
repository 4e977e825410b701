"""A create whose answer is lost (issue 14): the Terraform provider's
create-only PUT (``If-None-Match: *``) reaches the service and makes the
object, but the connection drops before the answer arrives; the client's
retry is then answered 412. The provider recognises its own object (a
resend, the spec it sent, unchanged since) and keeps it in the state; an
object made elsewhere is still refused.

Between the provider's client and the session lab's real service sits a
small relay that passes every request on and, when told, drops the answer
to the next PUT (closing the connection after the service has answered).
"""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from cowfleet.client import Client
from cowfleet.provider.diagnostics import ProviderError
from cowfleet.provider.resources import RESOURCES
from cowfleet.provider.values import conform
from tests.helpers import wait_until

pytestmark = pytest.mark.integration


class Relay(BaseHTTPRequestHandler):
    upstream = ""
    drop_puts = 0                    # answers to PUTs still to drop
    puts: list = []                  # (path, If-None-Match) of every PUT relayed

    def _relay(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
        resp = requests.request(self.command, self.upstream + self.path, data=body, headers=headers, timeout=30)
        if self.command == "PUT":
            Relay.puts.append((self.path, self.headers.get("If-None-Match")))
            if Relay.drop_puts:
                Relay.drop_puts -= 1
                self.close_connection = True        # the service did it; its answer is lost
                return
        self.send_response(resp.status_code)
        for k in ("Content-Type", "ETag"):
            if k in resp.headers:
                self.send_header(k, resp.headers[k])
        self.send_header("Content-Length", str(len(resp.content)))
        self.end_headers()
        self.wfile.write(resp.content)

    do_GET = do_PUT = do_DELETE = _relay

    def log_message(self, *args):
        pass


@pytest.fixture
def relayed(lab):
    Relay.upstream, Relay.drop_puts, Relay.puts = lab.state.endpoint, 0, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Relay)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    # as the provider configures it (server.configure): two retries
    yield Client(f"http://127.0.0.1:{server.server_address[1]}", lab.state.token, retries=2)
    server.shutdown()
    server.server_close()


def _plan(type_name: str, **config) -> dict:
    res = RESOURCES[type_name]
    planned, _ = res.plan(None, conform(config, res.block.type()))
    return planned


def test_a_create_whose_answer_was_lost_keeps_its_object_and_a_foreign_one_is_still_refused(relayed, client,
                                                                                           image_demo):
    flavor = RESOURCES["cowfleet_flavor"]
    group = RESOURCES["cowfleet_instance_group"]
    try:
        # the answer to each create is lost; the resend's 412 is recognised
        Relay.drop_puts = 1
        state = flavor.apply(relayed, None, _plan("cowfleet_flavor", name="tflost", vcpus=1, memory_mib=64))
        assert state["id"] == "tflost" and state["disk_gib"] == 1
        assert Relay.puts == [("/v1/flavors/tflost", "*")] * 2         # sent twice, create-only both times
        Relay.drop_puts, Relay.puts = 1, []
        state = group.apply(relayed, None, _plan("cowfleet_instance_group", name="tflost", image="demo",
                                                 flavor="tflost", size=0, labels={"a": "1"}))
        assert state["id"] == "tflost" and state["status"]["phase"] == "ready"
        assert Relay.puts == [("/v1/instance-groups/tflost", "*")] * 2
        assert client.get_group("tflost")["generation"] == 1

        # made elsewhere with another spec: refused, even when the answer was lost
        client.put_flavor("tfforeign", vcpus=2, memory_mib=128)
        client.put_group("tfforeign", image="demo", flavor="small", size=0, labels={"owner": "other"})
        for res, config in [(flavor, dict(name="tfforeign", vcpus=1, memory_mib=64)),
                            (group, dict(name="tfforeign", image="demo", flavor="small", size=0))]:
            Relay.drop_puts = 1
            with pytest.raises(ProviderError) as err:
                res.apply(relayed, None, _plan(res.type_name, **config))
            assert "already exists" in err.value.diags[0].summary and err.value.state is None
        # made elsewhere with the very spec we send, no answer lost: refused
        with pytest.raises(ProviderError) as err:
            flavor.apply(relayed, None, _plan("cowfleet_flavor", name="tfforeign", vcpus=2, memory_mib=128))
        assert "already exists" in err.value.diags[0].summary
        assert client.get_flavor("tfforeign")["vcpus"] == 2
        assert client.get_group("tfforeign")["labels"] == {"owner": "other"}
    finally:
        for name in ("tflost", "tfforeign"):
            client.delete_group(name)
        for name in ("tflost", "tfforeign"):             # a flavor goes once no group uses it
            wait_until(lambda: client.get_group(name) is None, 60, f"group {name} gone")
            client.delete_flavor(name)
