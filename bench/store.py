"""The prediction store's write path against a baseline measured in the same run, on a real Cassandra node.

    python -m bench.store [--seconds 5] [--rate 200] [--hosts H --port P]

Without --port it starts its own node (scratch data dir, removed afterwards) and migrates a `mnist_bench`
keyspace. One client thread, records like the gateway's (784-byte input, 10 probabilities), both tables:

- baseline: a synchronous prepared `session.execute` per table per record (what a naive request handler does);
  its per-record latency is what each request would wait;
- store, paced: `PredictionStore.record()` at --rate records/s: the latency a request sees (p50/p99);
- store, flat out: `record()` as fast as one thread can for --seconds, then until every record is in Cassandra
  (spooled ones replayed): sustained writes/s, and how many went through the spool.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import statistics
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

from cassandra.util import uuid_from_time

from deploy.local.cassandra_node import CassandraNode
from gateway.store import PredictionRecord, PredictionStore
from gateway.store.buckets import day_of
from gateway.store.cluster import build_cluster, quiet_driver_logs
from gateway.store.migrate import Migrator

KEYSPACE = "mnist_bench"


def make_record(n: int) -> PredictionRecord:
    now = datetime.now(UTC)
    probabilities = [0.01] * 10
    probabilities[n % 10] = 0.91
    return PredictionRecord(
        id=uuid_from_time(now),
        created_at=now,
        filename=f"upload-{n}.png",
        image_sha256=hashlib.sha256(n.to_bytes(8, "big")).hexdigest(),
        input_image=bytes(784),
        digit=n % 10,
        probabilities=probabilities,
        model_name="mnist",
        model_version=1,
        preprocess_ms=1.0,
        model_ms=2.0,
        total_ms=3.5,
        client_addr="127.0.0.1",
    )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def baseline(session, seconds: float) -> tuple[float, list[float]]:
    """Synchronous prepared inserts, both tables, one record at a time: (records/s, per-record ms)."""
    by_day = session.prepare(
        f"INSERT INTO {KEYSPACE}.predictions_by_day (day, id, created_at, filename, image_sha256, digit, "
        "probabilities, model_name, model_version, preprocess_ms, model_ms, total_ms, client_address) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
    by_id = session.prepare(
        f"INSERT INTO {KEYSPACE}.predictions_by_id (id, input, created_at, filename, image_sha256, digit, "
        "probabilities, model_name, model_version, preprocess_ms, model_ms, total_ms, client_address) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
    latencies, n, started = [], 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        r = make_record(n)
        common = [
            r.created_at,
            r.filename,
            r.image_sha256,
            r.digit,
            list(r.probabilities),
            r.model_name,
            r.model_version,
            r.preprocess_ms,
            r.model_ms,
            r.total_ms,
            r.client_addr,
        ]
        t0 = time.perf_counter()
        session.execute(by_day, [day_of(r.id), r.id, *common])
        session.execute(by_id, [r.id, r.input_image, *common])
        latencies.append((time.perf_counter() - t0) * 1000)
        n += 1
    return n / (time.perf_counter() - started), latencies


def wait_settled(store: PredictionStore, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = store.stats()
        if stats["in_flight"] == 0 and stats["spool_depth"] == 0:
            return
        time.sleep(0.01)
    raise SystemExit(f"the store did not settle within {timeout:.0f} s: {store.stats()}")


def paced(store: PredictionStore, rate: float, seconds: float) -> list[float]:
    latencies, interval = [], 1.0 / rate
    next_at = time.perf_counter()
    for n in range(int(rate * seconds)):
        delay = next_at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        record = make_record(n)
        t0 = time.perf_counter()
        store.record(record)
        latencies.append((time.perf_counter() - t0) * 1000)
        next_at += interval
    wait_settled(store)
    return latencies


def flat_out(store: PredictionStore, seconds: float) -> tuple[int, float, list[float], dict]:
    latencies, n, started = [], 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        record = make_record(n)
        t0 = time.perf_counter()
        store.record(record)
        latencies.append((time.perf_counter() - t0) * 1000)
        n += 1
    wait_settled(store)
    return n, time.perf_counter() - started, latencies, store.stats()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.store", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seconds", type=float, default=5.0, help="length of each phase (default: %(default)s)"
    )
    parser.add_argument("--rate", type=float, default=200.0, help="records/s of the paced phase")
    parser.add_argument("--hosts", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=None, help="use a running node instead of starting one")
    args = parser.parse_args(argv)
    quiet_driver_logs()
    with ExitStack() as stack:
        port = args.port
        if port is None:
            scratch = Path(tempfile.mkdtemp(prefix="bench-store-"))
            stack.callback(shutil.rmtree, scratch, ignore_errors=True)
            node = CassandraNode(scratch / "cassandra", unsafe_system=True)
            print("starting a Cassandra node ...", flush=True)
            node.start()
            stack.callback(node.kill)
            print(f"  ready after {node.startup_seconds:.1f} s", flush=True)
            port = node.port
        cluster = build_cluster(args.hosts, port, request_timeout=30.0, credentials=CassandraNode.credentials)
        stack.callback(cluster.shutdown)
        session = cluster.connect()
        Migrator(session, KEYSPACE).migrate()

        base_rate, base_lat = baseline(session, args.seconds)
        spool = Path(tempfile.mkdtemp(prefix="bench-spool-"))
        stack.callback(shutil.rmtree, spool, ignore_errors=True)
        store = PredictionStore(args.hosts, port, KEYSPACE, spool, credentials=CassandraNode.credentials)
        stack.callback(store.close)
        if not store.ping():
            raise SystemExit("the store cannot reach Cassandra")
        paced_lat = paced(store, args.rate, args.seconds)
        paced_spooled = store.stats()["spooled"]
        count, elapsed, flat_lat, stats = flat_out(store, args.seconds)

    rate = count / elapsed
    print()
    print(f"{'':34} {'records/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
    print(
        f"{'baseline: sync execute x2':34} {base_rate:>10.0f} {statistics.median(base_lat):>8.3f} "
        f"{percentile(base_lat, 99):>8.3f}"
    )
    print(
        f"{f'store.record() paced {args.rate:.0f}/s':34} {'':>10} {statistics.median(paced_lat):>8.3f} "
        f"{percentile(paced_lat, 99):>8.3f}"
    )
    print(
        f"{'store flat out (until all stored)':34} {rate:>10.0f} {statistics.median(flat_lat):>8.3f} "
        f"{percentile(flat_lat, 99):>8.3f}"
    )
    print()
    print(f"sustained writes/s, store / baseline: {rate / base_rate:.2f}x")
    print(
        f"request-path latency p50, baseline / store.record() paced: "
        f"{statistics.median(base_lat) / statistics.median(paced_lat):.0f}x lower"
    )
    print(
        f"flat out: {count} records, {stats['spooled'] - paced_spooled} through the spool (in-flight bound "
        f"reached), {stats['lost']} lost"
    )
    print(f"paced: {len(paced_lat)} records, {paced_spooled} through the spool")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
