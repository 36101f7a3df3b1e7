"""A TLS front for the local engine that demands client certificates, and the PKI for it.

Lets tests check corral's `tcp://` + TLS host support with real handshakes: the proxy
verifies corral's client certificate, then relays bytes to /var/run/docker.sock.
"""

import contextlib
import socket
import ssl
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(folder: Path, name: str = "corral-test") -> Pki:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by it."""
    folder.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
             f"/CN={name}-ca", "-keyout", "ca-key.pem", "-out", "ca.pem", cwd=folder)  # fmt: skip
    (folder / "server.ext").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    (folder / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for who in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}-{who}",
                 "-keyout", f"{who}-key.pem", "-out", f"{who}.csr", cwd=folder)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
                 "-CAcreateserial", "-days", "2", "-extfile", f"{who}.ext",
                 "-out", f"{who}.pem", cwd=folder)  # fmt: skip
    return Pki(
        folder / "ca.pem",
        folder / "server.pem",
        folder / "server-key.pem",
        folder / "client.pem",
        folder / "client-key.pem",
    )


class TlsEngineProxy:
    """Listens on 127.0.0.1 with mutual TLS and relays each connection to a unix socket."""

    def __init__(self, pki: Pki, target: str = "/var/run/docker.sock") -> None:
        self.target = target
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.context.load_cert_chain(str(pki.server_cert), str(pki.server_key))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        # every socket it opened, closed on exit: one still open then (a relay whose client
        # has not hung up yet) would be left to the garbage collector and its warning
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    def __enter__(self) -> "TlsEngineProxy":
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopped.set()
        self.listener.close()
        self.thread.join(timeout=5)
        with self._lock:
            left = list(self._open)
        for sock in left:
            with contextlib.suppress(OSError):
                sock.close()

    def _keep(self, sock: socket.socket) -> socket.socket:
        """Track `sock` (closed at once when the proxy has stopped: __exit__ is past)."""
        with self._lock:
            self._open.add(sock)
            if self.stopped.is_set():
                sock.close()
        return sock

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        opened = [self._keep(raw)]
        try:
            client = self._keep(self.context.wrap_socket(raw, server_side=True))
            opened.append(client)
            engine = self._keep(socket.socket(socket.AF_UNIX))
            opened.append(engine)
            engine.connect(self.target)
        except (ssl.SSLError, OSError):
            for sock in opened:
                with contextlib.suppress(OSError):
                    sock.close()
            return
        threading.Thread(target=_pipe, args=(engine, client), daemon=True).start()
        _pipe(client, engine)


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.close()
