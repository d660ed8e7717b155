"""Crash drills on real components: the gateway as deployed (`mnist-gateway`), a Cassandra node, signals.

- A gateway worker SIGKILLed under steady load: every prediction whose answer reached a client is in
  Cassandra afterwards (the server starts a new worker, which claims the dead worker's log and ships it).
- Cassandra down while thousands of predictions are recorded (through the store and over HTTP), then back:
  every one arrives, and predictions are answered while the backlog replays.

The ~100k version of the second drill, with RSS over time and the replay rate, is `python -m bench.store
--drill` (too long for a test).
"""

from __future__ import annotations

import gzip
import os
import signal
import threading
import uuid
from pathlib import Path

import numpy as np
import pytest
import requests

from gateway.store import PredictionStore
from tests.test_gateway_e2e import as_upload, eventually, predict
from tests.test_store import make_record, rows_by_id, wait_until


@pytest.fixture(scope="module")
def uploads(mnist_dir: Path) -> list[bytes]:
    """Twenty MNIST test digits as users send them."""
    with gzip.open(mnist_dir / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    return [as_upload(image) for image in images[:20]]


def worker_pids(master_pid: int) -> list[int]:
    """The server's workers: the children of its main process (not multiprocessing's helper processes)."""
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    workers = []
    for pid in children:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:  # gone meanwhile
            continue
        if b"resource_tracker" not in command and b"semaphore_tracker" not in command:
            workers.append(int(pid))
    return workers


class SteadyLoad:
    """`threads` clients posting predictions back to back; `answered` holds the ids of every 200 received."""

    def __init__(self, url: str, uploads: list[bytes], threads: int = 3) -> None:
        self.url, self.uploads = url, uploads
        self.answered: list[str] = []
        self.failures = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(threads)]

    def _run(self, n: int) -> None:
        i = n
        while not self._stop.is_set():
            try:
                response = predict(self.url, self.uploads[i % len(self.uploads)])
            except requests.RequestException:  # the killed worker's connection: no answer, no id
                self.failures += 1
                continue
            if response.status_code == 200:
                self.answered.append(response.json()["id"])
            else:
                self.failures += 1
            i += len(self._threads)

    def __enter__(self) -> SteadyLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)


@pytest.mark.parametrize("sync", ["fsync", "write"])  # `write` survives a killed process too, not a crash
def test_a_sigkilled_worker_loses_no_answered_prediction(
    start_gateway, uploads, clean_tables, cassandra_session, sync
):
    # A long linger widens the window between an answer and its write to Cassandra: the drill must not
    # depend on the kill landing in a lucky moment.
    gateway = start_gateway(CASSANDRA_WRITE_LINGER_MS="1000", GATEWAY_WORKERS="1", GATEWAY_WAL_SYNC=sync)
    eventually(
        lambda: requests.get(f"{gateway.url}/readyz").status_code == 200,
        timeout_s=120,
        what="the gateway ready",
    )
    (first_worker,) = worker_pids(gateway.proc.pid)

    with SteadyLoad(gateway.url, uploads) as load:
        eventually(lambda: len(load.answered) >= 40, timeout_s=120, what="40 answers before the kill")
        os.kill(first_worker, signal.SIGKILL)
        killed_at = len(load.answered)
        eventually(
            lambda: worker_pids(gateway.proc.pid) not in ([], [first_worker]),
            timeout_s=60,
            what="the server to start a new worker",
        )
        eventually(lambda: len(load.answered) >= killed_at + 20, timeout_s=120, what="answers after the kill")
    ids = [uuid.UUID(i) for i in load.answered]
    eventually(
        lambda: rows_by_id(cassandra_session, clean_tables, ids) == set(ids),
        timeout_s=120,
        what=f"all {len(ids)} answered predictions in Cassandra",
    )


def test_cassandra_down_then_back_every_prediction_arrives_while_answering(
    cassandra_node, start_gateway, uploads, clean_tables, cassandra_session, tmp_path
):
    gateway = start_gateway()
    eventually(
        lambda: requests.get(f"{gateway.url}/readyz").status_code == 200,
        timeout_s=120,
        what="the gateway ready",
    )
    store = PredictionStore(
        [cassandra_node.host],
        cassandra_node.port,
        clean_tables,
        tmp_path / "log",
        max_backoff=1.0,
        credentials=cassandra_node.credentials,
    )
    records = [make_record(n) for n in range(3000)]
    over_http: list[str] = []
    try:
        assert wait_until(store.ping)  # connected, then Cassandra dies under it
        cassandra_node.kill()
        for record in records:
            store.record(record)  # durable in the log, not in Cassandra
        for n in range(30):
            response = predict(gateway.url, uploads[n % len(uploads)])
            assert response.status_code == 200, response.text
            over_http.append(response.json()["id"])
        assert store.stats()["pending_records"] == len(records)
        # The replay is held after its first round, so the gateway is asked while the backlog is half shipped.
        mid_replay, resume = threading.Event(), threading.Event()
        ship = store._ship

        def ship_then_hold(batch):
            error = ship(batch)
            if batch is not None and error is None:
                mid_replay.set()
                resume.wait(120)
            return error

        store._ship = ship_then_hold
    finally:
        cassandra_node.start()
    during = []
    try:
        assert mid_replay.wait(180), "the backlog never started shipping"
        for n in range(5):
            response = predict(gateway.url, uploads[n % len(uploads)])
            assert response.status_code == 200, response.text
            during.append(response.json()["id"])
        assert 0 < store.stats()["shipped"] < len(records)  # answered mid-replay
    finally:
        resume.set()
    ids = [r.id for r in records] + [uuid.UUID(i) for i in over_http + during]
    try:
        eventually(
            lambda: rows_by_id(cassandra_session, clean_tables, ids) == set(ids),
            timeout_s=180,
            what=f"all {len(ids)} predictions in Cassandra",
        )
        stats = store.stats()
        assert stats["pending_records"] == 0 and stats["pending_bytes"] == 0
        assert stats["shipped"] == len(records) and stats["refused"] == 0
    finally:
        store.close()
    assert list((tmp_path / "log").glob("*.log")) == []  # trimmed: every segment acknowledged
