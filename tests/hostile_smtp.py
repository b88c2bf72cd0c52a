"""A hostile SMTP server on loopback for tests: its replies carry terminal escape sequences."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

# Sets the terminal's title, turns text red, rings the bell, and moves the cursor up: harmless only escaped.
ESCAPES: Final = "\x1b]0;pwned\x07\x1b[31mred\x1b[0m\x1b[2A\x9b31m"
BANNER: Final = f"220 evil.test ESMTP {ESCAPES}"
REJECT: Final = f"550 5.7.1 no {ESCAPES} thanks"


def _serve_one(conn: socket.socket) -> None:
    with conn:
        conn.settimeout(10)
        out = conn.makefile("rwb")
        out.write(f"{BANNER}\r\n".encode("latin-1"))
        out.flush()
        for raw in out:
            verb = raw.decode("latin-1").strip().split(" ")[0].upper()
            if verb in ("EHLO", "HELO"):
                reply = f"250-evil.test greets {ESCAPES}\r\n250 8BITMIME"
            elif verb == "QUIT":
                out.write(b"221 bye\r\n")
                out.flush()
                return
            elif verb == "MAIL":
                reply = REJECT
            else:
                reply = "250 ok"
            out.write(f"{reply}\r\n".encode("latin-1"))
            out.flush()


@contextmanager
def hostile_smtp() -> Iterator[int]:
    """Serve the hostile SMTP server on 127.0.0.1; yield its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=_serve_one, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        listener.close()
        thread.join(5)
