"""The REST server's connection bound, which slow clients cannot use up.

Each connection costs a thread, so their number is bounded. A connection is *waiting* from the moment it opens
(or answered its previous request) until its next request has fully arrived; while its request is processed
it is *busy*. Past the limit, a new connection closes the connection that has been waiting longest: clients
that connect and then send slowly, or nothing, make room for one that sends its request at once, and a
connection whose request is being answered is never dropped. Only when every connection is busy is the new
one refused (503).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class ConnectionTable:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._waiting_since: dict[socket.socket, float] = {}

    def admit(self, sock: socket.socket) -> bool:
        """Register a new connection (waiting); False when all ``limit`` connections are busy."""
        with self._lock:
            if len(self._open) >= self.limit:
                if not self._waiting_since:
                    return False
                oldest = min(self._waiting_since, key=self._waiting_since.__getitem__)
                self._forget(oldest)
                _hang_up(oldest)  # its thread sees end-of-file and exits
            self._open.add(sock)
            self._waiting_since[sock] = time.monotonic()
            return True

    def waiting(self, sock: socket.socket) -> None:
        """The connection waits for its next request (from now)."""
        with self._lock:
            if sock in self._open:
                self._waiting_since[sock] = time.monotonic()

    def busy(self, sock: socket.socket) -> None:
        """The connection's request has fully arrived and is being answered."""
        with self._lock:
            self._waiting_since.pop(sock, None)

    def closed(self, sock: socket.socket) -> None:
        with self._lock:
            self._forget(sock)

    def __len__(self) -> int:
        with self._lock:
            return len(self._open)

    def _forget(self, sock: socket.socket) -> None:
        self._open.discard(sock)
        self._waiting_since.pop(sock, None)


def _hang_up(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already gone
        sock.shutdown(socket.SHUT_RDWR)
