"""The cost of replication: the gateway on 1 Cassandra node (RF 1, ONE) vs 3 nodes (RF 3, LOCAL_QUORUM).

    python -m bench.cassandra_cluster [--seconds 8] [--runs 3] [--concurrency 8] [--warmup 20]
                                      [--heap 512m] [--model-base-path DIR]

One `mnist-serve` serves both; for each Cassandra layout in turn it starts the nodes (deploy/local/), migrates
the keyspace with that replication, starts `mnist-gateway` with every node as a contact point (consistency
derived from CASSANDRA_REPLICATION), warms up, then measures `--runs` windows of `POST /v1/predict` (a 28x28
PNG) at `--concurrency`. After each window it waits until the gateway's log has shipped, so the Cassandra CPU
counted covers every prediction of the window (the write is asynchronous: it is not in the answer's latency).

Per layout it prints throughput and p99 (ranges over runs), and CPU time per request of the gateway, the
model server and all Cassandra JVMs together (from /proc): what replication costs per prediction. On a small
machine every tier shares the same cores, so three JVMs slow the others too; the CPU per request is the figure
that carries to a real cluster, where each node has its own machine.
"""

from __future__ import annotations

import argparse
import http.client
import shutil
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
KEYSPACE = "mnist_bench_cluster"
LAYOUTS = {"1 node, RF 1 (ONE)": (1, "1"), "3 nodes, RF 3 (LOCAL_QUORUM)": (3, "3")}
CASSANDRA = "Cassandra (all nodes)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.cassandra_cluster", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="measured duration per run (default 8)")
    parser.add_argument("--runs", type=int, default=3, help="measured runs per layout (default 3)")
    parser.add_argument("--concurrency", type=int, default=8, help="client threads (default 8)")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds of load before measuring")
    parser.add_argument("--heap", default="512m", help="heap of each Cassandra node (default 512m)")
    parser.add_argument("--model-base-path", type=Path, help="base dir holding mnist/<version>/")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(REPO_ROOT))
    from bench.gateway import mnist_digit, png_bytes, resolve_models, serve_newest
    from gateway.store.cluster import quiet_driver_logs

    quiet_driver_logs()
    upload = png_bytes(mnist_digit(0))
    results: dict[str, list] = {}
    with ExitStack() as stack:
        scratch = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
        stack.callback(shutil.rmtree, scratch, True)
        models = resolve_models(args.model_base_path, scratch)
        server, _ = serve_newest(stack, models, scratch)
        for name, (size, replication) in LAYOUTS.items():
            print(f"{name}: starting Cassandra ...", flush=True)
            results[name] = measure_layout(args, size, replication, server, upload, scratch)
    report(args, results)
    return 0


def measure_layout(
    args: argparse.Namespace, size: int, replication: str, server, upload: bytes, scratch: Path
):
    """Start `size` nodes and a gateway on them, warm up, measure `args.runs` windows; stop them all."""
    from bench.gateway import CpuMeter, gateway_call, run_level, worker_pids
    from deploy.local.cassandra_cluster import CassandraCluster
    from gateway.replication import Replication
    from gateway.store.cluster import build_cluster
    from gateway.store.migrate import Migrator
    from tests.fixtures.gateway_server import GatewayProcess, gateway_environment
    from tests.test_gateway_e2e import metric
    from tests.waiting import eventually

    with ExitStack() as stack:
        cluster = CassandraCluster(scratch / f"cassandra-{size}", size, heap=args.heap)
        stack.callback(cluster.kill)
        cluster.start()
        print(f"  ready after {cluster.startup_seconds:.0f} s", flush=True)
        driver = build_cluster(
            cluster.hosts, cluster.port, request_timeout=60.0, credentials=cluster.credentials
        )
        Migrator(driver.connect(), KEYSPACE, replication=Replication.parse(replication)).migrate()
        driver.shutdown()
        env = gateway_environment(
            server,
            cluster.node(1),
            KEYSPACE,
            scratch / f"spool-{size}",
            CASSANDRA_HOSTS=cluster.contact_points,
            CASSANDRA_REPLICATION=replication,
            LOG_LEVEL="WARNING",
        )
        gateway = GatewayProcess(env, scratch / f"gateway-{size}.log").start()
        stack.callback(gateway.stop)

        def shipped() -> bool:
            return metric(http_get(gateway.port, "/metrics"), "gateway_spool_depth") == 0

        make_call = gateway_call(gateway.port, upload)

        cpu = CpuMeter(
            lambda: {
                "gateway": worker_pids(gateway.proc.pid),
                "model server": [server.process.pid],
                CASSANDRA: [node.process.pid for node in cluster.nodes if node.process],
            }
        )
        if args.warmup > 0:
            run_level(args.concurrency, args.warmup, make_call)
            eventually(shipped, what="the log shipped", timeout_s=300)
        runs = []
        for number in range(1, args.runs + 1):
            before = cpu.sample()
            level = run_level(args.concurrency, args.seconds, make_call)
            eventually(shipped, what="the log shipped", timeout_s=300)  # the writes' CPU included
            after = cpu.sample()
            done = level.requests + level.errors
            level.cpu_ms = {tier: (after[tier] - before[tier]) * 1000 / done for tier in before}
            runs.append(level)
            print(
                f"  run {number}: {level.rps:.0f} req/s, p99 {level.p99_ms:.1f} ms, errors {level.errors}, "
                "CPU ms/request: " + ", ".join(f"{tier} {ms:.2f}" for tier, ms in level.cpu_ms.items()),
                flush=True,
            )
        return runs


def report(args: argparse.Namespace, results: dict[str, list]) -> None:
    print(f"\nconcurrency {args.concurrency}, {args.runs} runs of {args.seconds:g} s each (ranges: min-max)")
    tiers = list(next(iter(results.values()))[0].cpu_ms)
    print(" | ".join(["layout", "req/s", "p99 ms", *[f"CPU ms/req {tier}" for tier in tiers]]))
    for name, runs in results.items():
        cells = [name, span([r.rps for r in runs], 0), span([r.p99_ms for r in runs], 1)]
        cells += [span([r.cpu_ms[tier] for r in runs], 2) for tier in tiers]
        print(" | ".join(cells))
    single, triple = (results[name] for name in LAYOUTS)
    ratios = [t.cpu_ms[CASSANDRA] / s.cpu_ms[CASSANDRA] for s, t in zip(single, triple, strict=True)]
    print(f"Cassandra CPU per request, 3 nodes / 1 node: {span(ratios, 2)}x (run by run)")


def http_get(port: int, path: str) -> str:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        return connection.getresponse().read().decode()
    finally:
        connection.close()


def span(values: list[float], digits: int) -> str:
    low, high = min(values), max(values)
    return f"{low:.{digits}f}-{high:.{digits}f}" if round(high - low, digits) else f"{low:.{digits}f}"


if __name__ == "__main__":
    sys.exit(main())
