"""`mnist-gateway`'s process management, on the real server: graceful stop flushes the store, SIGHUP replaces
the workers while serving, a killed worker is replaced, header limits answer clear statuses.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess

import requests

from tests.test_gateway_e2e import as_upload, eventually, mnist_test_set, predict, stored_row

__all__ = ["mnist_test_set"]  # a fixture, imported for pytest


def worker_pids(gateway) -> set[int]:
    out = subprocess.run(["pgrep", "-P", str(gateway.proc.pid)], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


def raw_status(port: int, head: bytes) -> int:
    """The status the server answers to a raw request head (no client library normalising it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(head)
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1])


def test_sigterm_flushes_what_the_store_holds(start_gateway, mnist_test_set, clean_tables, cassandra_session):
    # A writer that lingers a whole second still holds the prediction when SIGTERM arrives.
    gateway = start_gateway(CASSANDRA_WRITE_LINGER_MS="1000")
    eventually(lambda: requests.get(f"{gateway.url}/readyz").status_code == 200, what="ready")
    r = predict(gateway.url, as_upload(mnist_test_set[0][30]))
    assert r.status_code == 200, r.text
    assert gateway.stop() == 0
    assert stored_row(cassandra_session, clean_tables, r.json()["id"]) is not None


def test_sighup_replaces_the_workers_while_serving(start_gateway, mnist_test_set):
    gateway = start_gateway(GATEWAY_WORKERS="2", GATEWAY_THREADS="2")
    upload = as_upload(mnist_test_set[0][31])
    before = eventually(lambda: len(worker_pids(gateway)) == 2 and worker_pids(gateway), what="2 workers")
    os.kill(gateway.proc.pid, signal.SIGHUP)
    statuses = []

    def replaced() -> bool:
        statuses.append(predict(gateway.url, upload).status_code)
        now = worker_pids(gateway)
        return len(now) == 2 and not now & before

    eventually(replaced, timeout_s=90, what="both workers replaced")
    assert set(statuses) == {200}, statuses
    assert gateway.stop() == 0


def test_a_killed_worker_is_replaced(start_gateway, mnist_test_set):
    gateway = start_gateway()
    (worker,) = eventually(lambda: worker_pids(gateway), what="a worker")
    os.kill(worker, signal.SIGKILL)
    eventually(lambda: worker_pids(gateway) - {worker}, timeout_s=60, what="a new worker")
    upload = as_upload(mnist_test_set[0][32])
    eventually(lambda: predict(gateway.url, upload).status_code == 200, timeout_s=60, what="answers again")
    assert gateway.stop() == 0


def test_header_limits(gateway_server):
    port = gateway_server.port

    def get(target: bytes, headers: int = 0, value: bytes = b"1") -> int:
        fields = b"".join(b"X-F%d: %s\r\n" % (i, value) for i in range(headers))
        return raw_status(port, b"GET " + target + b" HTTP/1.1\r\nHost: t\r\n" + fields + b"\r\n")

    assert get(b"/healthz?" + b"a" * 8000) == 200
    assert get(b"/healthz?" + b"a" * 70_000) == 431
    assert get(b"/healthz", headers=99) == 200  # with Host: 100 fields
    assert get(b"/healthz", headers=100) == 431
    assert get(b"/healthz", headers=1, value=b"v" * 8000) == 200
    assert get(b"/healthz", headers=1, value=b"v" * 70_000) == 431
