"""The control channel between ``driller bench`` and its worker processes.

JSON lines over a Unix stream socket.  Every rank of every worker group connects to
the orchestrator's socket, says hello, then blocks in ``recv`` (not in MPI, so an
idle group burns no CPU while another group is measured), runs each command it is
sent and answers it.  Nothing here is timed.
"""

from __future__ import annotations

import json
import socket
import time


class LineConn:
    """A JSON-lines connection with per-read deadlines."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._buf = b""

    def send(self, obj) -> None:
        self.sock.sendall(json.dumps(obj).encode() + b"\n")

    def recv(self, timeout: float | None = None):
        """The next message; raises TimeoutError or EOFError."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buf:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("no answer in time")
                self.sock.settimeout(left)
            else:
                self.sock.settimeout(None)
            try:
                chunk = self.sock.recv(1 << 16)
            except socket.timeout:
                raise TimeoutError("no answer in time") from None
            if not chunk:
                raise EOFError("connection closed")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return json.loads(line)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def connect(path: str, hello: dict) -> LineConn:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    c = LineConn(s)
    c.send(hello)
    return c


def serve_commands(conn: LineConn, handle) -> None:
    """Worker loop: answer each command with ``handle(cmd)`` until 'quit' or EOF.

    ``handle`` returns a dict; an exception becomes ``{"ok": False, "error": ...}``.
    """
    while True:
        try:
            cmd = conn.recv()
        except (EOFError, OSError):
            return
        if cmd.get("op") == "quit":
            try:
                conn.send({"ok": True})
            except OSError:
                pass
            return
        try:
            res = handle(cmd)
            res.setdefault("ok", True)
        except Exception as e:  # reported to the orchestrator, which skips the method
            res = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        conn.send(res)
