"""Scale-out of the model server: the gateway with 1 vs 2 `mnist-serve` replicas, measured in the same run.

    python -m bench.scaleout [--runs 3] [--seconds 10] [--warmup 20] [--concurrency 8] [--model-base-path DIR]

Brings up, on free local ports: a real Cassandra node (migrated keyspace), two `mnist-serve` replicas over the
same model, and two `mnist-gateway` processes (1 worker each): one with `MODEL_SERVER_GRPC` naming the first
replica only, one naming both (gRPC round_robin with health checks, as in production). Each run measures both
gateways in turn (`POST /v1/predict` of a 28x28 PNG at `--concurrency`, HTTP keep-alive, for `--seconds`), so
slow drift of a shared machine hits both alike; the table gives the range over `--runs`.

What replication costs is stated per request: CPU time by tier (from /proc: gateway, model servers summed,
Cassandra, load generator) and the memory each extra replica holds (its resident set). On a machine with few
cores expect little throughput gain: the replicas compete for the same cores as everything else; the point
is the price of the second copy and that nothing slows down for having it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from bench.gateway import (
    CpuMeter,
    Level,
    gateway_call,
    migrated_node,
    mnist_digit,
    png_bytes,
    resolve_models,
    rss_mb,
    run_level,
    worker_pids,
)
from training.contract import version_dirs

REPO_ROOT = Path(__file__).resolve().parents[1]
KEYSPACE = "mnist_bench_scaleout"
SETUPS = ("1 replica", "2 replicas")
TIERS = ("gateway", "model servers", "Cassandra", "load generator")


def span(values: list[float], digits: int = 1) -> str:
    low, high = min(values), max(values)
    if round(low, digits) == round(high, digits):
        return f"{low:.{digits}f}"
    return f"{low:.{digits}f}-{high:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scaleout", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="measured runs of each setup (default 3)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured duration per run (default 10)")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds of load per gateway first (20)")
    parser.add_argument("--concurrency", type=int, default=8, help="client threads (default 8)")
    parser.add_argument("--model-base-path", type=Path, help="base dir holding mnist/<version>/")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.seconds <= 0 or args.concurrency < 1:
        parser.error("--runs and --concurrency must be >= 1, --seconds > 0")

    # Test helpers that start the real processes on free ports (the same code the e2e tests use).
    sys.path.insert(0, str(REPO_ROOT))
    from gateway.store.cluster import quiet_driver_logs
    from tests.fixtures.gateway_server import GatewayProcess, gateway_environment
    from tests.fixtures.model_server import ModelServerProcess, models_config_text

    quiet_driver_logs()
    results: dict[str, list[Level]] = {setup: [] for setup in SETUPS}
    with ExitStack() as stack:
        scratch = Path(tempfile.mkdtemp(prefix="bench-scaleout-"))
        stack.callback(shutil.rmtree, scratch, True)
        models = resolve_models(args.model_base_path, scratch)
        version = max(version_dirs(models / "mnist"))

        node = migrated_node(stack, scratch, KEYSPACE)

        config = scratch / "models.config"
        config.write_text(models_config_text(models, versions=(version,), labels={"stable": version}))
        replicas = []
        for i in range(2):
            print(f"starting mnist-serve replica {i + 1} ({models}, stable -> {version}) ...", flush=True)
            replica = ModelServerProcess(models, config, scratch / f"mnist-serve-{i}.log").start()
            stack.callback(replica.stop)
            replicas.append(replica)

        gateways = {}
        for setup, targets in zip(SETUPS, (replicas[:1], replicas), strict=True):
            print(f"starting mnist-gateway for {setup} ...", flush=True)
            env = gateway_environment(
                replicas[0],
                node,
                KEYSPACE,
                scratch / f"spool-{len(gateways)}",
                MODEL_SERVER_GRPC=",".join(r.grpc_address for r in targets),
                GATEWAY_WORKERS="1",
                LOG_LEVEL="WARNING",
            )
            gateway = GatewayProcess(env, scratch / f"gateway-{len(gateways)}.log").start()
            stack.callback(gateway.stop)
            gateways[setup] = gateway

        upload = png_bytes(mnist_digit(0))
        if args.warmup > 0:
            for setup, gateway in gateways.items():
                print(f"warming up {setup} for {args.warmup:g} s ...", flush=True)
                run_level(args.concurrency, args.warmup, gateway_call(gateway.port, upload))
        for run in range(args.runs):
            for setup, gateway in gateways.items():
                print(f"run {run + 1}/{args.runs}: {setup} ...", flush=True)
                cpu = CpuMeter(
                    lambda gateway=gateway: {
                        "gateway": worker_pids(gateway.proc.pid) or [gateway.proc.pid],
                        "model servers": [r.process.pid for r in replicas],
                        "Cassandra": [node.process.pid],
                    }
                )
                level = run_level(args.concurrency, args.seconds, gateway_call(gateway.port, upload), cpu)
                results[setup].append(level)
        replica_rss = [rss_mb(r.process.pid) for r in replicas]

    print()
    print(
        f"model: {models}/mnist/{version}; concurrency {args.concurrency}; "
        f"{args.runs} runs x {args.seconds:g} s per setup, interleaved; "
        f"{os.cpu_count()} CPUs shared by load generator and servers; load average "
        f"{os.getloadavg()[0]:.1f} at the end; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    header = f"{'setup':<11} {'req/s':>11} {'p50 ms':>11} {'p99 ms':>11} {'errors':>6}  " + " ".join(
        f"{t + ' CPU ms':>22}" for t in TIERS
    )
    print(header)
    print("-" * len(header))
    for setup, levels in results.items():
        cpu = " ".join(f"{span([lv.cpu_ms[t] for lv in levels], 2):>22}" for t in TIERS)
        print(
            f"{setup:<11} {span([lv.rps for lv in levels], 0):>11} {span([lv.p50_ms for lv in levels]):>11} "
            f"{span([lv.p99_ms for lv in levels]):>11} {sum(lv.errors for lv in levels):>6}  {cpu}"
        )
    one, two = results[SETUPS[0]], results[SETUPS[1]]
    ratios = [b.rps / a.rps for a, b in zip(one, two, strict=True)]
    total = [sum(lv.cpu_ms.values()) for lv in one], [sum(lv.cpu_ms.values()) for lv in two]
    extra = [b - a for a, b in zip(*total, strict=True)]
    served = [b.cpu_ms["model servers"] - a.cpu_ms["model servers"] for a, b in zip(one, two, strict=True)]
    print(
        f"\n2 replicas vs 1, per run: throughput x{span(ratios, 2)}; CPU per request, all tiers: "
        f"{span(extra, 2)} ms more ({span(served, 2)} ms of it in the model servers)"
    )
    print(f"memory held by each replica (resident set): {', '.join(f'{m:.0f} MB' for m in replica_rss)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
