"""The servers the ``servers`` cases of :mod:`bad_input_probe` point OPENAI_BASE_URL at, run in
a process of their own so that no forked case inherits their threads."""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing.connection import Connection


def canned_server(status: int, content_type: str, body: bytes) -> str:
    """Start a server answering every GET and POST with the same reply; return its base URL."""

    class Canned(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            """Keep stderr for the probe's own report."""

        def do_POST(self) -> None:
            """Read the request, if any, and send the reply."""
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(status)
            for header, value in (("Content-Type", content_type), ("Content-Length", str(len(body)))):
                self.send_header(header, value)
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST

    server = ThreadingHTTPServer(("127.0.0.1", 0), Canned)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/v1"


def silent_server() -> str:
    """Start a server that accepts connections and never answers; return its base URL."""
    listener = socket.create_server(("127.0.0.1", 0))
    held = []  # the accepted sockets, kept open so that no client sees them close

    def accept() -> None:
        while True:
            held.append(listener.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}/v1"


def refused_url() -> str:
    """The base URL of a port nothing listens on (bound a moment, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


def serve(conn: Connection) -> None:
    """Run in its own process: a live fake OpenAI server, one that answers every request with a
    500, one that accepts and never answers, one that answers 200 with a body that is not JSON,
    and a refused port; send their URLs back through ``conn``, then serve until killed."""
    from fake_openai import FakeAPI

    fake = FakeAPI(max_requests=10**9)
    failing = FakeAPI(max_requests=10**9)
    failing.fail_status = 500
    silent = silent_server()
    garbage = canned_server(200, "application/json", b"<html>not json</html>")
    conn.send(
        {"fake": fake.url, "failing": failing.url, "silent": silent, "garbage": garbage, "refused": refused_url()}
    )
    while True:
        time.sleep(3600)
