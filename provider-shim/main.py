"""``terraform-provider-cowfleet``: the process Terraform starts.

Terraform (through HashiCorp's go-plugin) starts the provider with
``TF_PLUGIN_MAGIC_COOKIE`` and ``PLUGIN_CLIENT_CERT`` set, and reads exactly
one handshake line from stdout::

    1|5|tcp|127.0.0.1:PORT|grpc|<base64 DER of the server certificate, unpadded>

then speaks gRPC over mutual TLS: the server presents a self-signed
certificate made at start, and accepts only the client certificate it was
given. ``plugin.GRPCController/Shutdown`` ends the process (without it
Terraform waits 2 s per launch before killing it).

Terraform starts the provider 3-5 times per command, so start-up time
matters: only what a launch needs is imported.
"""
from __future__ import annotations

import base64
import os
import shutil
import signal
import sys
import tempfile
import threading

MAGIC_COOKIE_KEY = "TF_PLUGIN_MAGIC_COOKIE"
MAGIC_COOKIE = "d602bf8f470bc67ca7faa0386276bbdd4330efaf76d1a219cb4d6991ca9872b2"
# far above any -parallelism in use (default 10), so Stop always finds a thread
MAX_CONCURRENT_RPCS = 256
CORE_PROTOCOL = 1
APP_PROTOCOL = 5


def server_certificate() -> tuple[bytes, bytes, bytes]:
    """A fresh self-signed ECDSA certificate for 'localhost' (the name go-plugin
    checks), usable as its own CA: (key PEM, cert PEM, cert DER)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cowfleet"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(seconds=30))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=True, key_cert_sign=True,
                                         content_commitment=False, data_encipherment=False,
                                         key_agreement=False, crl_sign=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, cert.public_bytes(serialization.Encoding.PEM), cert.public_bytes(serialization.Encoding.DER)


OPENSSL_REQ = ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
               "-days", "1", "-subj", "/O=cowfleet/CN=localhost",
               "-addext", "subjectAltName=DNS:localhost", "-addext", "basicConstraints=critical,CA:TRUE",
               "-addext", "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign",
               "-addext", "extendedKeyUsage=serverAuth,clientAuth"]


class CertMaker:
    """Makes the server certificate while Python imports grpc: ``openssl req``
    in a child process (the same certificate as ``server_certificate``, which
    is the fallback where openssl is missing). Saves ~0.1 s a launch: Terraform
    starts the provider 3-5 times per command."""

    def __init__(self, folder: str):
        import subprocess
        self.key, self.cert = os.path.join(folder, "key.pem"), os.path.join(folder, "cert.pem")
        exe = shutil.which("openssl")
        self.proc = None
        if exe:
            self.proc = subprocess.Popen([exe, *OPENSSL_REQ, "-keyout", self.key, "-out", self.cert],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)

    def result(self) -> tuple[bytes, bytes, bytes]:
        import ssl
        if self.proc is not None and self.proc.wait() == 0:
            with open(self.key, "rb") as k, open(self.cert, "rb") as c:
                key_pem, cert_pem = k.read(), c.read()
            os.unlink(self.key)
            return key_pem, cert_pem, ssl.PEM_cert_to_DER_cert(cert_pem.decode())
        return server_certificate()


def handshake_line(network: str, address: str, cert_der: bytes | None) -> str:
    line = f"{CORE_PROTOCOL}|{APP_PROTOCOL}|{network}|{address}|grpc"
    if cert_der is not None:
        line += "|" + base64.b64encode(cert_der).decode().rstrip("=")
    return line


def serve() -> int:
    # A unix socket in a folder only this user may enter (go-plugin's default
    # on Unix): the access control that mutual TLS cannot give here, see README
    sock_dir = tempfile.mkdtemp(prefix="cowfleet-tfp-")
    client_cert = os.environ.get("PLUGIN_CLIENT_CERT")
    certs = CertMaker(sock_dir) if client_cert else None
    try:
        return _serve(sock_dir, client_cert, certs)
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)


def _serve(sock_dir: str, client_cert: str | None, certs: CertMaker | None) -> int:
    from concurrent import futures

    import grpc

    from cowfleet.provider.server import Provider, handlers, setup_logging, stop

    setup_logging()
    # Ctrl-C in a terminal reaches the whole process group, Terraform and us:
    # we stop waiting at once (Terraform's Stop RPC says the same a moment
    # later) instead of dying with Python's KeyboardInterrupt mid-request
    signal.signal(signal.SIGINT, lambda *_: stop())
    versions = os.environ.get("PLUGIN_PROTOCOL_VERSIONS")
    if versions and str(APP_PROTOCOL) not in versions.split(","):
        print(f"terraform-provider-cowfleet speaks plugin protocol {APP_PROTOCOL}; "
              f"this Terraform offers {versions}", file=sys.stderr)
        return 1
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    # one thread per concurrent RPC: with only Terraform's parallelism (10) of
    # them, 10 waiting applies left the Stop RPC queued until one wait ended.
    # Threads start as RPCs arrive, so a large cap costs nothing idle
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=MAX_CONCURRENT_RPCS))
    server.add_generic_rpc_handlers(handlers(grpc, Provider(), done.set))
    sock = os.path.join(sock_dir, "plugin.sock")
    cert_der = None
    if certs is not None:
        key_pem, cert_pem, cert_der = certs.result()
        # root_certificates: a client certificate, when one is presented, must be
        # Terraform's; Terraform's (P-521) is not presented to BoringSSL, see README
        creds = grpc.ssl_server_credentials([(key_pem, cert_pem)], root_certificates=client_cert.encode(),
                                            require_client_auth=False)
        server.add_secure_port(f"unix:{sock}", creds)
    else:
        server.add_insecure_port(f"unix:{sock}")
    server.start()
    sys.stdout.write(handshake_line("unix", sock, cert_der) + "\n")
    sys.stdout.flush()
    done.wait()
    server.stop(grace=0.5).wait()
    return 0


def main(argv: list[str] | None = None) -> int:
    if os.environ.get(MAGIC_COOKIE_KEY) != MAGIC_COOKIE:
        print("This is the Terraform provider for cowfleet: Terraform starts it, not you.\n"
              "To install it for Terraform, run: cowfleet terraform install", file=sys.stderr)
        return 1
    code = serve()
    # skip the interpreter's teardown of grpc's threads (~0.1 s): all is closed
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
