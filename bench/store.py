"""The prediction store's write path against a baseline measured in the same run, on a real Cassandra node.

    python -m bench.store [--seconds 5] [--rate 200] [--hosts H --port P]
    python -m bench.store --drill 100000

Without --port it starts its own node (scratch data dir, removed afterwards) and migrates a `mnist_bench`
keyspace. One client thread, records like the gateway's (784-byte input, 10 probabilities), both tables:

- baseline: a synchronous prepared `session.execute` per table per record (what a naive request handler does);
  its per-record latency is what each request would wait;
- fdatasync: one 1.5 KB append + `fdatasync` on the log's disk, the floor of a durable `record()`;
- store, paced: `PredictionStore.record()` at --rate records/s, with the log fsynced
  (`GATEWAY_WAL_SYNC=fsync`) and not (`write`): the latency a request sees (p50/p99) and the request
  thread's CPU per record;
- store, flat out: `record()` as fast as one thread can for --seconds, then until every record is in
  Cassandra: sustained writes/s.

`--drill N` (own node only): Cassandra is killed, N predictions are recorded, Cassandra is started again and
the backlog ships while `record()` keeps being called at --rate; it prints the process's RSS over time, the
replay rate, the latency of `record()` during the replay, and checks that all N rows arrived.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import tempfile
import threading
import time
import uuid
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
        if store.stats()["pending_records"] == 0:
            return
        time.sleep(0.01)
    raise SystemExit(f"the store did not settle within {timeout:.0f} s: {store.stats()}")


def fsync_floor(directory: Path, count: int = 300) -> list[float]:
    """ms per 1.5 KB append + fdatasync in `directory`: what the disk charges a durable record."""
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    latencies = []
    try:
        for _ in range(count):
            t0 = time.perf_counter()
            os.write(fd, b"x" * 1500)
            os.fdatasync(fd)
            latencies.append((time.perf_counter() - t0) * 1000)
    finally:
        os.close(fd)
        path.unlink()
    return latencies


def paced(
    store: PredictionStore, rate: float, seconds: float, first: int = 0
) -> tuple[list[float], list[float]]:
    """(wall ms, request-thread CPU ms) of each `record()` at `rate` records/s."""
    latencies, cpu, interval = [], [], 1.0 / rate
    next_at = time.perf_counter()
    for n in range(first, first + int(rate * seconds)):
        delay = next_at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        record = make_record(n)
        t0, c0 = time.perf_counter(), time.thread_time()
        store.record(record)
        latencies.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.thread_time() - c0) * 1000)
        next_at += interval
    return latencies, cpu


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


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def drill(node: CassandraNode, session, store: PredictionStore, count: int, rate: float) -> None:
    """Cassandra down while `count` predictions are recorded, then back: RSS, replay rate, all arrived."""
    print(f"drill: Cassandra stopped; recording {count} predictions", flush=True)
    node.stop()
    ids = bytearray(16 * count)  # compact: the bench's own memory must not hide the store's
    started, step, threads = time.perf_counter(), max(count // 10, 1), 8

    def record_share(first: int) -> None:  # 8 request threads: their fsyncs are shared (group commit)
        for n in range(first, count, threads):
            record = make_record(n)
            store.record(record)
            ids[16 * n : 16 * n + 16] = record.id.bytes
            if n % step == 0:
                pending = store.stats()["pending_records"]
                print(f"  {n:>7} recorded  pending {pending:>7}  RSS {rss_mib():6.1f} MiB", flush=True)

    workers = [threading.Thread(target=record_share, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    print(
        f"  {count / (time.perf_counter() - started):.0f} records/s into the log while Cassandra was down "
        f"({threads} threads); RSS {rss_mib():.1f} MiB",
        flush=True,
    )
    node.start()
    print(f"Cassandra back after {node.startup_seconds:.1f} s; shipping the backlog", flush=True)
    replay_started, last_print, first_ship = time.perf_counter(), 0.0, None
    latencies, n = [], count
    while store.stats()["shipped"] < count:  # oldest first: then the backlog is in Cassandra
        if first_ship is None and store.stats()["shipped"] > 0:
            first_ship = time.perf_counter()
        lat, _ = paced(store, rate, 0.5, first=n)  # requests keep being answered meanwhile
        latencies += lat
        n += len(lat)
        elapsed = time.perf_counter() - replay_started
        if elapsed - last_print >= 5:
            last_print = elapsed
            stats = store.stats()
            print(
                f"  {elapsed:6.1f} s  shipped {stats['shipped']:>7}  pending {stats['pending_records']:>7}  "
                f"RSS {rss_mib():6.1f} MiB",
                flush=True,
            )
        if elapsed > 1800:
            raise SystemExit(f"the backlog did not ship within 30 minutes: {store.stats()}")
    ended = time.perf_counter()
    shipping = ended - (first_ship or replay_started)
    print(
        f"replayed {count} (+{n - count} recorded meanwhile) {ended - replay_started:.1f} s after the node "
        f"was up, {shipping:.1f} s from the first acknowledged round: {count / shipping:.0f} records/s; "
        f"RSS {rss_mib():.1f} MiB"
    )
    print(
        f"  record() during the replay: p50 {statistics.median(latencies):.3f} ms, "
        f"p99 {percentile(latencies, 99):.3f} ms ({len(latencies)} calls)"
    )
    select = session.prepare(f"SELECT id FROM {KEYSPACE}.predictions_by_id WHERE id IN ?")
    every = [uuid.UUID(bytes=bytes(ids[i : i + 16])) for i in range(0, len(ids), 16)]
    found = sum(
        len(list(session.execute(select, [every[i : i + 100]], timeout=60))) for i in range(0, count, 100)
    )
    print(f"  rows in Cassandra: {found} of {count}")
    if found != count:
        raise SystemExit("the drill lost predictions")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.store", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seconds", type=float, default=5.0, help="length of each phase (default: %(default)s)"
    )
    parser.add_argument("--rate", type=float, default=200.0, help="records/s of the paced phase")
    parser.add_argument("--hosts", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=None, help="use a running node instead of starting one")
    parser.add_argument("--drill", type=int, metavar="N", help="run the Cassandra-down drill with N records")
    args = parser.parse_args(argv)
    if args.drill and args.port is not None:
        parser.error("--drill stops and starts Cassandra: it needs its own node (no --port)")
    quiet_driver_logs()
    with ExitStack() as stack:
        scratch = Path(tempfile.mkdtemp(prefix="bench-store-"))
        stack.callback(shutil.rmtree, scratch, ignore_errors=True)
        port = args.port
        if port is None:
            # The drill restarts the node: its schema must survive that (unsafe_system off).
            node = CassandraNode(scratch / "cassandra", unsafe_system=not args.drill)
            print("starting a Cassandra node ...", flush=True)
            node.start()
            stack.callback(node.kill)
            print(f"  ready after {node.startup_seconds:.1f} s", flush=True)
            port = node.port
        cluster = build_cluster(args.hosts, port, request_timeout=30.0, credentials=CassandraNode.credentials)
        stack.callback(cluster.shutdown)
        session = cluster.connect()
        Migrator(session, KEYSPACE).migrate()

        def store(name: str, **options) -> PredictionStore:
            made = PredictionStore(
                args.hosts, port, KEYSPACE, scratch / name, credentials=CassandraNode.credentials, **options
            )
            stack.callback(made.close)
            deadline = time.monotonic() + 60  # ping() waits 1 s for the connection: a busy machine needs more
            while not made.ping():
                if time.monotonic() > deadline:
                    raise SystemExit("the store cannot reach Cassandra")
            return made

        if args.drill:
            drill(node, session, store("drill-log", max_backoff=2.0), args.drill, args.rate)
            return 0

        base_rate, base_lat = baseline(session, args.seconds)
        floor = fsync_floor(scratch)
        paced_runs = {}
        for mode in ("fsync", "write"):
            mode_store = store(f"log-{mode}", sync=mode == "fsync")
            paced_runs[mode] = paced(mode_store, args.rate, args.seconds)
            wait_settled(mode_store)
        count, elapsed, flat_lat, stats = flat_out(store("log-flat"), args.seconds)

    rate = count / elapsed
    print()
    print(f"{'':38} {'records/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'CPU p50 ms':>11}")
    print(
        f"{'baseline: sync execute x2':38} {base_rate:>10.0f} {statistics.median(base_lat):>8.3f} "
        f"{percentile(base_lat, 99):>8.3f}"
    )
    print(
        f"{'append 1.5 KB + fdatasync':38} {'':>10} {statistics.median(floor):>8.3f} "
        f"{percentile(floor, 99):>8.3f}"
    )
    for mode, (lat, cpu) in paced_runs.items():
        print(
            f"{f'store.record() paced {args.rate:.0f}/s, {mode}':38} {'':>10} {statistics.median(lat):>8.3f} "
            f"{percentile(lat, 99):>8.3f} {statistics.median(cpu):>11.3f}"
        )
    print(
        f"{'store flat out (until all stored)':38} {rate:>10.0f} {statistics.median(flat_lat):>8.3f} "
        f"{percentile(flat_lat, 99):>8.3f}"
    )
    print()
    print(f"sustained writes/s, store / baseline: {rate / base_rate:.2f}x")
    print(f"flat out: {count} records, {stats['refused']} refused")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
