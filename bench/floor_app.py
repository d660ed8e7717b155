"""The smallest gateway built from the project's own pieces: the reference point of `bench.gateway_floor`.

    FLOOR_VARIANT=A FLOOR_PORT=8090 MODEL_SERVER_GRPC=... python -m bench.floor_app

One route, `POST /v1/predict` of a multipart `image` field holding a 28x28 PNG, answered with the digit, the
probabilities and a time-UUID id. It is served by Granian exactly as `mnist-gateway` is (gateway/server.py's
Server arguments: WSGI, 1 worker, 16 threads). FLOOR_VARIANT picks what happens besides the prediction:

- A: nothing: `request.files`, a Pillow decode, one `ModelClient.predict`, the JSON answer;
- B: A, and each prediction queued for a writer thread that sends the store's two prepared INSERTs
  (gateway/store/store.py) in unlogged batches of the store's sizes after the store's 50 ms linger: the
  cheapest way to write the same rows; no write-ahead log, no counters;
- C: A, and `PredictionStore.record()`, what the real gateway records with (write-ahead log with fdatasync,
  the shipper with the two INSERTs in batches and the version_stats counters).

Environment: FLOOR_VARIANT, FLOOR_PORT, MODEL_SERVER_GRPC; for B and C CASSANDRA_HOSTS, CASSANDRA_PORT,
CASSANDRA_USERNAME, CASSANDRA_PASSWORD, CASSANDRA_KEYSPACE; for C FLOOR_SPOOL_DIR.
"""

from __future__ import annotations

import hashlib
import io
import os
import queue
import sys
import threading
import time
from datetime import UTC, datetime

import numpy as np
from cassandra.query import BatchStatement, BatchType
from flask import Flask, jsonify, request
from PIL import Image

from gateway.model_client import ModelClient
from gateway.prediction import new_timeuuid
from gateway.store import buckets
from gateway.store.cluster import Credentials, build_cluster
from gateway.store.records import PredictionRecord
from gateway.store.store import _BATCH_ROWS, _STATEMENTS, PredictionStore

VARIANTS = ("A", "B", "C")
TTL_S = 90 * 86400  # the store's default
LINGER_S = 0.05  # the store's default write_linger


def credentials() -> Credentials:
    return Credentials(os.environ["CASSANDRA_USERNAME"], os.environ["CASSANDRA_PASSWORD"])


def unlogged(statements: list):
    """One statement as it is, several in an unlogged batch (as the store's shipper sends them)."""
    if len(statements) == 1:
        return statements[0]
    batch = BatchStatement(BatchType.UNLOGGED)
    for statement in statements:
        batch.add(statement)
    return batch


class Writer:
    """B's logging: records in a queue; one thread sends each round as the store's two INSERTs."""

    def __init__(self) -> None:
        self.queue: queue.SimpleQueue[tuple] = queue.SimpleQueue()
        threading.Thread(target=self._run, name="floor-writer", daemon=True).start()

    def add(self, record_id, image: bytes, columns: list) -> None:
        """`columns`: the values of the store's _COLUMNS, in their order."""
        self.queue.put((record_id, image, columns))

    def _run(self) -> None:
        hosts, port = os.environ["CASSANDRA_HOSTS"], int(os.environ["CASSANDRA_PORT"])
        session = build_cluster(hosts, port, credentials=credentials()).connect()
        keyspace = os.environ["CASSANDRA_KEYSPACE"]
        insert = {name: session.prepare(_STATEMENTS[name].format(ks=keyspace)) for name in _BATCH_ROWS}
        while True:
            records = [self.queue.get()]
            time.sleep(LINGER_S)
            while not self.queue.empty():
                records.append(self.queue.get_nowait())
            rows = {
                "write_by_day": [[buckets.day_of(i), i, *columns, TTL_S] for i, _, columns in records],
                "write_by_id": [[i, image, *columns, TTL_S] for i, image, columns in records],
            }
            futures = []
            for name, values in rows.items():
                size = _BATCH_ROWS[name]  # rows per request, as the store cuts them
                for at in range(0, len(values), size):
                    chunk = [insert[name].bind(row) for row in values[at : at + size]]
                    futures.append(session.execute_async(unlogged(chunk)))
            for future in futures:
                try:
                    future.result()
                except Exception as exc:  # a reference point, not a store: say it and go on
                    print(f"floor writer: a write failed: {exc}", file=sys.stderr, flush=True)


def make_app() -> Flask:
    """The app of one worker process (Granian calls this in the worker, after the fork)."""
    variant = os.environ.get("FLOOR_VARIANT", "A")
    if variant not in VARIANTS:
        raise SystemExit(f"FLOOR_VARIANT must be one of {', '.join(VARIANTS)}, not {variant!r}")
    client = ModelClient(os.environ["MODEL_SERVER_GRPC"], timeout_s=5, model_name="mnist")
    writer = Writer() if variant == "B" else None
    store = None
    if variant == "C":
        store = PredictionStore(
            os.environ["CASSANDRA_HOSTS"],
            int(os.environ["CASSANDRA_PORT"]),
            os.environ["CASSANDRA_KEYSPACE"],
            os.environ["FLOOR_SPOOL_DIR"],
            credentials=credentials(),
        )
    app = Flask(__name__)

    @app.post("/v1/predict")
    def predict():
        data = request.files["image"].read()
        with Image.open(io.BytesIO(data)) as decoded:
            image = np.asarray(decoded, dtype=np.uint8)
        if image.shape != (28, 28):
            return jsonify(error="a 28x28 greyscale PNG only"), 400
        result = client.predict(image[np.newaxis], label="stable")
        digit = int(result.digits[0])
        probabilities = [round(float(p), 6) for p in result.probabilities[0]]
        record_id = new_timeuuid()
        if writer is not None or store is not None:
            created_at, sha256 = datetime.now(UTC), hashlib.sha256(data).hexdigest()
            version, address = result.model_version or 0, request.remote_addr
            if writer is not None:  # the store's _COLUMNS, in their order
                columns = [created_at, None, sha256, digit, probabilities, "mnist", version, None, None, None]
                writer.add(record_id, image.tobytes(), [*columns, address, "stable", None])
            else:
                store.record(
                    PredictionRecord(
                        id=record_id,
                        created_at=created_at,
                        filename=None,
                        image_sha256=sha256,
                        input_image=image.tobytes(),
                        digit=digit,
                        probabilities=probabilities,
                        model_name="mnist",
                        model_version=version,
                        client_addr=address,
                        routing="stable",
                    )
                )
        return jsonify(digit=digit, probabilities=probabilities, id=str(record_id))

    def warm_up() -> None:  # the channel (and C's session) open before the first request, as the gateway's
        try:
            client.model_status(label="stable")
            if store is not None:
                store.ping()
        except Exception as exc:
            print(f"floor warm-up: {exc}", file=sys.stderr, flush=True)

    threading.Thread(target=warm_up, name="warm-up", daemon=True).start()
    return app


def main() -> None:
    """Serve `make_app` with gateway/server.py's Server arguments (1 worker, 16 threads)."""
    from granian.constants import Interfaces, Loops
    from granian.http import HTTP1Settings
    from granian.server import Server

    from gateway.server import HEADER_BUFFER_BYTES

    Server(
        "bench.floor_app:make_app",
        factory=True,
        interface=Interfaces.WSGI,
        address="127.0.0.1",
        port=int(os.environ["FLOOR_PORT"]),
        workers=1,
        blocking_threads=16,
        loop=Loops.asyncio,
        http1_settings=HTTP1Settings(max_buffer_size=HEADER_BUFFER_BYTES),
        websockets=False,
        log_level="warning",
        log_access=False,
        workers_kill_timeout=10,
        respawn_failed_workers=False,
    ).serve()


if __name__ == "__main__":
    main()
