"""The scorecard's cost on a real Cassandra node, against a baseline measured in the same run.

    python -m bench.scorecard [--rounds 20] [--days 1] [--hosts H --port P]

Without --port it starts its own node (scratch data dir, removed afterwards) and migrates a `mnist_bench`
keyspace. It fills `version_stats` for two versions over the last --days days with the rows a busy minute
leaves (every metric a few thousand predictions per minute touch: requests, routing, ten digits, ten latency
buckets, shadow pairs, labels and a dozen confusion cells: 40 rows per version and minute), then times:

- baseline: one prepared single-row read (`SELECT release_version FROM system.local`), the floor of any read;
- the scorecard (store read + arithmetic, no cache) for windows of 10 minutes, 1 hour and --days days:
  wall time and the process's CPU time per scorecard (`time.process_time`: driver decoding and arithmetic).

The counts do not matter for the cost (a counter row is a counter row), the number of rows does.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cassandra.concurrent import execute_concurrent_with_args

from deploy.local.cassandra_node import CassandraNode
from gateway import scorecard
from gateway.store import PredictionStore, stats
from gateway.store.cluster import build_cluster, quiet_driver_logs
from gateway.store.migrate import Migrator

KEYSPACE = "mnist_bench"
MODEL = "bench"
VERSIONS = (1, 2)


def minute_metrics(version: int) -> dict[str, int]:
    other = VERSIONS[0] if version == VERSIONS[1] else VERSIONS[1]
    metrics = {
        stats.REQUESTS: 1500,
        stats.ERRORS: 1,
        stats.routing("stable"): 1400,
        stats.routing("pinned"): 100,
    }
    metrics.update({stats.digit(d): 150 for d in range(10)})
    metrics.update({stats.latency_bucket(2.0 * 1.25**i): 150 for i in range(10)})
    metrics.update({stats.SHADOW: 300, stats.compared(other): 300, stats.agreed(other): 295})
    metrics.update({stats.LABELS: 20, stats.CORRECT: 19})
    metrics.update(
        {stats.confusion(d, d): 2 for d in range(10)} | {stats.confusion(1, 7): 1, stats.confusion(4, 9): 1}
    )
    return metrics


def fill(session, days: float) -> int:
    update = session.prepare(
        f"UPDATE {KEYSPACE}.version_stats SET value = value + ? "
        "WHERE model_name = ? AND model_version = ? AND day = ? AND minute = ? AND metric = ?"
    )
    now = stats.minute_of(datetime.now(UTC))
    minutes = int(days * 1440) + 2
    rows = []
    for version in VERSIONS:
        metrics = minute_metrics(version)
        for i in range(minutes):
            minute = now - timedelta(minutes=i)
            rows.extend((n, MODEL, version, stats.day_of(minute), minute, m) for m, n in metrics.items())
    execute_concurrent_with_args(session, update, rows, concurrency=64, raise_on_first_error=True)
    return len(rows)


def timed(call, rounds: int) -> tuple[list[float], list[float]]:
    call()  # warm: prepared statements, connections
    walls, cpus = [], []
    for _ in range(rounds):
        wall, cpu = time.perf_counter(), time.process_time()
        call()
        walls.append((time.perf_counter() - wall) * 1000)
        cpus.append((time.process_time() - cpu) * 1000)
    return walls, cpus


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scorecard", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20, help="scorecards per window (default: %(default)s)")
    parser.add_argument(
        "--days", type=float, default=1.0, help="days of counters to fill and read (at most 7)"
    )
    parser.add_argument("--hosts", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=None, help="use a running node instead of starting one")
    args = parser.parse_args(argv)
    if not 0 < args.days <= 7:
        parser.error("--days must be more than 0 and at most 7")
    quiet_driver_logs()
    with ExitStack() as stack:
        scratch = Path(tempfile.mkdtemp(prefix="bench-scorecard-"))
        stack.callback(shutil.rmtree, scratch, ignore_errors=True)
        port = args.port
        if port is None:
            node = CassandraNode(scratch / "cassandra", unsafe_system=True)
            print("starting a Cassandra node ...", flush=True)
            node.start()
            stack.callback(node.kill)
            port = node.port
        cluster = build_cluster(args.hosts, port, request_timeout=60.0, credentials=CassandraNode.credentials)
        stack.callback(cluster.shutdown)
        session = cluster.connect()
        Migrator(session, KEYSPACE).migrate()
        started = time.perf_counter()
        written = fill(session, args.days)
        print(f"  {written} counter rows written in {time.perf_counter() - started:.1f} s", flush=True)
        store = PredictionStore(
            args.hosts, port, KEYSPACE, scratch / "log", credentials=CassandraNode.credentials
        )
        stack.callback(store.close)
        while not store.ping():
            pass
        ping = session.prepare("SELECT release_version FROM system.local")
        results = {"baseline: one single-row read": timed(lambda: session.execute(ping), args.rounds)}
        for seconds in (600, 3600, int(args.days * 86400)):

            def card(seconds=seconds):
                window = scorecard.window_for(max(scorecard.MIN_WINDOW_S, seconds))
                rows = store.version_stats(MODEL, list(VERSIONS), window.start, window.last_minute)
                return scorecard.scorecard(MODEL, window, rows, stable_version=1, canary_version=2)

            rows = 2 * 40 * scorecard.window_for(seconds).minutes()
            results[f"scorecard, {seconds} s window ({rows} rows)"] = timed(card, args.rounds)
    base_wall = statistics.median(results["baseline: one single-row read"][0])
    print()
    print(f"{'':46} {'wall p50 ms':>12} {'range':>17} {'x baseline':>11} {'CPU p50 ms':>11}")
    for name, (walls, cpus) in results.items():
        print(
            f"{name:46} {statistics.median(walls):>12.2f} {min(walls):>8.2f}-{max(walls):<8.2f} "
            f"{statistics.median(walls) / base_wall:>11.1f} {statistics.median(cpus):>11.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
