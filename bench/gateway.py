"""Gateway end to end against direct gRPC Predict to the same model server, measured in the same run.

    python -m bench.gateway [--runs 3] [--seconds 6] [--warmup 30] [--concurrency 1,8,32]
                            [--model-base-path DIR] [--workers 1] [--threads 16] [--max-batch N]
                            [--model-concurrency N]

Brings up what production runs, on free local ports: a real Cassandra node (migrated keyspace), `mnist-serve`
with the model (`--model-base-path`, else the default model found by bench/models.py, else a quick export by
`mnist-train`), and `mnist-gateway` (Granian). At each concurrency it measures, for the same wall-clock
duration:

- direct: the 28x28 input already preprocessed, `ModelClient.predict` over gRPC (one shared channel, as the
  gateway has): the baseline, what a client speaking TF Serving's API directly gets;
- gateway: `POST /v1/predict` of a 28x28 PNG and of a 280x280 PNG (what the web page's canvas sends) over
  HTTP keep-alive: upload parsing, preprocessing, the same gRPC call, the Cassandra write, the JSON answer.

Load generators are threads in this process (http.client and the gRPC stub: both lean), on the same machine
as the servers. Before measuring, the gateway path runs for `--warmup` seconds: a fresh Cassandra JVM spends
its first minute compiling (it costs 2-3x more CPU per write then than once warm). Next to throughput and
latency it prints the CPU time each tier spent per request (from /proc), which says where the time goes when
every tier shares the same cores, and what each tier needs on its own. Every level is measured `--runs` times
(all levels in turn, then again), and each figure is printed as the range over the runs.
Goals: gateway CPU per request <= 1.5 ms (28x28) and <= 3 ms (canvas); median overhead <= 2 ms at
concurrency 1; throughput >= 0.5x of direct gRPC at concurrency 8.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from bench import profile
from bench.data import mnist_dir
from bench.models import default_model_base
from training.contract import version_dirs

REPO_ROOT = Path(__file__).resolve().parents[1]
KEYSPACE = "mnist_bench"
DIRECT = "direct gRPC (28x28 input)"


@dataclass
class Level:
    concurrency: int
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    cpu_ms: dict[str, float] = field(default_factory=dict)  # CPU time per request, by tier

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


class CpuMeter:
    """CPU seconds (user + system) used by named processes, read from /proc, plus this process's own."""

    def __init__(self, pids: Callable[[], dict[str, list[int]]]) -> None:
        self.pids = pids

    def sample(self) -> dict[str, float]:
        tick = os.sysconf("SC_CLK_TCK")
        used: dict[str, float] = {}
        for tier, pids in self.pids().items():
            used[tier] = 0.0
            for pid in pids:
                try:
                    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                    used[tier] += (int(fields[11]) + int(fields[12])) / tick
                except (OSError, IndexError, ValueError):
                    pass
        times = os.times()
        used["load generator"] = times.user + times.system
        return used


def migrated_node(stack: ExitStack, scratch: Path, keyspace: str = KEYSPACE):
    """A fresh local Cassandra node in `scratch`, `keyspace` migrated; killed when `stack` closes."""
    from deploy.local.cassandra_node import CassandraNode
    from gateway.store.cluster import build_cluster
    from gateway.store.migrate import Migrator

    print("starting Cassandra ...", flush=True)
    node = CassandraNode(scratch / "cassandra", unsafe_system=True)
    node.start()
    stack.callback(node.kill)
    cluster = build_cluster([node.host], node.port, request_timeout=30.0, credentials=node.credentials)
    Migrator(cluster.connect(), keyspace).migrate()
    cluster.shutdown()
    return node


def serve_newest(stack: ExitStack, models: Path, scratch: Path):
    """`mnist-serve` on `models`, `stable` on the newest version, stopped with `stack`: (server, version)."""
    from tests.fixtures.model_server import ModelServerProcess, models_config_text

    version = max(version_dirs(models / "mnist"))
    print(f"starting mnist-serve on {models} (stable -> version {version}) ...", flush=True)
    config = scratch / "models.config"
    config.write_text(models_config_text(models, versions=(version,), labels={"stable": version}))
    server = ModelServerProcess(models, config, scratch / "mnist-serve.log").start()
    stack.callback(server.stop)
    return server, version


def gateway_call(
    port: int, upload: bytes, content_type: str = "image/png"
) -> Callable[[], Callable[[], bool]]:
    """A maker of one client's call: `POST /v1/predict` of `upload` on its own keep-alive connection."""

    def make() -> Callable[[], bool]:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        headers = {"Content-Type": content_type}

        def call() -> bool:
            try:
                connection.request("POST", "/v1/predict", body=upload, headers=headers)
                response = connection.getresponse()
                response.read()
                return response.status == 200
            except (OSError, http.client.HTTPException):
                connection.close()  # reconnects on the next request
                return False

        return call

    return make


def run_level(
    concurrency: int,
    seconds: float,
    make_call: Callable[[], Callable[[], bool]],
    cpu: CpuMeter | None = None,
) -> Level:
    """`concurrency` threads each calling their own `make_call()` result in a loop for `seconds`."""
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    start_gate = threading.Barrier(concurrency + 1)
    stop_at = [0.0]

    def worker(i: int) -> None:
        call = make_call()
        call()  # warm this thread's connection
        start_gate.wait()
        mine, clock = latencies[i], time.perf_counter
        while True:
            t0 = clock()
            if t0 >= stop_at[0]:
                break
            ok = call()
            if ok:
                mine.append(clock() - t0)
            else:
                errors[i] += 1

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + 1e9
    start_gate.wait()
    began = time.perf_counter()
    stop_at[0] = began + seconds
    before = cpu.sample() if cpu else {}
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    after = cpu.sample() if cpu else {}
    values = sorted(v for per in latencies for v in per)
    if not values:
        raise RuntimeError("no request succeeded")

    def pct(q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))] * 1000

    done = len(values) + sum(errors)
    cpu_ms = {tier: (after[tier] - before[tier]) * 1000 / done for tier in before}
    return Level(
        concurrency,
        len(values),
        sum(errors),
        elapsed,
        statistics.median(values) * 1000,
        pct(0.9),
        pct(0.99),
        cpu_ms,
    )


def mnist_digit(index: int = 0) -> np.ndarray:
    with gzip.open(mnist_dir() / "t10k-images-idx3-ubyte.gz") as f:
        return np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[index]


def png_bytes(image: np.ndarray) -> bytes:
    """A 28x28 MNIST-style PNG: preprocessing's quick path, so the gateway's own cost shows."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def canvas_png(image: np.ndarray) -> bytes:
    """A digit as the web page's canvas sends it: 280x280 PNG, white ink on black."""
    buffer = io.BytesIO()
    Image.fromarray(image).resize((280, 280), Image.Resampling.BILINEAR).save(buffer, format="PNG")
    return buffer.getvalue()


def resolve_models(arg: Path | None, scratch: Path) -> Path:
    for candidate in (arg, default_model_base()):
        if candidate is not None and any((candidate / "mnist").glob("[0-9]*")):
            return candidate
    base = scratch / "models"
    print(
        "no model given and no default model found: exporting a quick one with mnist-train ...",
        flush=True,
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "training.cli",
            "--model-base-path",
            str(base),
            "--data-dir",
            str(mnist_dir()),
            "--epochs",
            "1",
            "--max-train-samples",
            "6000",
        ],
        check=True,
        cwd=REPO_ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    return base


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def worker_pids(master: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="measured runs of every level (default 3)")
    parser.add_argument("--seconds", type=float, default=6.0, help="measured duration per level (default 6)")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated levels (default 1,8,32)")
    parser.add_argument(
        "--warmup", type=float, default=30.0, help="seconds of gateway load before measuring (default 30)"
    )
    parser.add_argument("--model-base-path", type=Path, help="base dir holding mnist/<version>/")
    parser.add_argument("--workers", type=int, default=1, help="gateway worker processes (default 1)")
    parser.add_argument("--threads", type=int, default=16, help="threads per gateway worker (default 16)")
    parser.add_argument(
        "--max-batch",
        type=int,
        help="GATEWAY_MODEL_MAX_BATCH (default: the gateway's; 1: every request its own Predict call)",
    )
    parser.add_argument(
        "--model-concurrency",
        type=int,
        help="GATEWAY_MODEL_CONCURRENCY (default: the gateway's)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")
    parser.add_argument(
        "--profile",
        type=Path,
        help="sample the gateway worker with py-spy during each gateway level, write the samples in this "
        "folder and print the top functions (costs CPU itself: read CPU figures from a run without it)",
    )
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    if args.runs < 1 or not levels or min(levels) < 1:
        parser.error("--runs and every --concurrency level must be >= 1")

    # Test helpers that start the real processes on free ports (the same code the e2e tests use).
    sys.path.insert(0, str(REPO_ROOT))
    from gateway.model_client import ModelClient
    from gateway.preprocess import to_mnist
    from gateway.store.cluster import quiet_driver_logs
    from tests.fixtures.gateway_server import GatewayProcess, gateway_environment

    quiet_driver_logs()
    with ExitStack() as stack:
        scratch = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
        stack.callback(shutil.rmtree, scratch, True)
        models = resolve_models(args.model_base_path, scratch)
        node = migrated_node(stack, scratch)
        server, version = serve_newest(stack, models, scratch)

        print(f"starting mnist-gateway ({args.workers} worker(s) x {args.threads} threads) ...", flush=True)
        env = gateway_environment(
            server,
            node,
            KEYSPACE,
            scratch / "spool",
            GATEWAY_WORKERS=str(args.workers),
            GATEWAY_THREADS=str(args.threads),
            LOG_LEVEL="WARNING",
            **{
                name: str(value)
                for name, value in (
                    ("GATEWAY_MODEL_MAX_BATCH", args.max_batch),
                    ("GATEWAY_MODEL_CONCURRENCY", args.model_concurrency),
                )
                if value is not None
            },
        )
        started = time.perf_counter()
        gateway = GatewayProcess(env, scratch / "gateway.log").start()
        ready_s = time.perf_counter() - started
        stack.callback(gateway.stop)

        digit = mnist_digit(0)
        uploads = {"gateway, 28x28 PNG": png_bytes(digit), "gateway, 280x280 canvas PNG": canvas_png(digit)}
        model_input = to_mnist(uploads["gateway, 280x280 canvas PNG"]).image[np.newaxis]
        client = ModelClient(server.grpc_address, timeout_s=10, model_name="mnist", retries=0)
        stack.callback(client.close)

        def direct_call() -> Callable[[], bool]:
            def call() -> bool:
                try:
                    client.predict(model_input, label="stable")
                    return True
                except Exception:
                    return False

            return call

        cpu = CpuMeter(
            lambda: {
                "gateway": worker_pids(gateway.proc.pid),
                "model server": [server.process.pid],
                "Cassandra": [node.process.pid],
            }
        )
        if args.warmup > 0:
            print(f"warming up for {args.warmup:g} s (gateway load at concurrency 8) ...", flush=True)
            run_level(8, args.warmup, gateway_call(gateway.port, uploads["gateway, 28x28 PNG"]))

        runs: list[dict[int, dict[str, Level]]] = []
        profiles: dict[tuple[int, str], Counter] = {}
        images_per_call: dict[tuple[int, str], list[float]] = {}
        if args.profile:
            if not profile.available():
                parser.error("--profile needs py-spy (pip install py-spy)")
            args.profile.mkdir(parents=True, exist_ok=True)
        for run in range(1, args.runs + 1):
            results: dict[int, dict[str, Level]] = {}
            runs.append(results)
            for c in levels:
                print(f"run {run}/{args.runs}, concurrency {c}: direct gRPC ...", flush=True)
                results[c] = {DIRECT: run_level(c, args.seconds, direct_call, cpu)}
                for mode, upload in uploads.items():
                    print(f"run {run}/{args.runs}, concurrency {c}: {mode} ...", flush=True)
                    with ExitStack() as sampling:
                        if args.profile:
                            name = f"r{run}-c{c}-{mode.split(', ')[1].split()[0]}"
                            pids = worker_pids(gateway.proc.pid)
                            samples = [args.profile / f"{name}-{pid}.txt" for pid in pids]
                            for pid, path in zip(pids, samples, strict=True):
                                sampling.enter_context(profile.Sampler(pid, path))
                        before = shared_calls(scrape(gateway.port))
                        results[c][mode] = run_level(c, args.seconds, gateway_call(gateway.port, upload), cpu)
                        after = shared_calls(scrape(gateway.port))
                    calls = after[1] - before[1]
                    images_per_call.setdefault((c, mode), []).append(
                        (after[0] - before[0]) / calls if calls else 0
                    )
                    if args.profile:
                        profiles[(c, mode)] = profiles.get((c, mode), Counter()) + sum(
                            map(profile.read_collapsed, samples), Counter()
                        )

        worker_rss = [rss_mb(p) for p in worker_pids(gateway.proc.pid)]
        depth = [line for line in scrape(gateway.port).splitlines() if line.startswith("gateway_spool_depth")]

    print()
    print(
        f"model: {models}/mnist/{version}; gateway: {args.workers} worker(s) x {args.threads} threads; "
        f"{args.seconds:g} s per level; {os.cpu_count()} CPUs shared by load generators and servers; "
        f"load average {os.getloadavg()[0]:.1f} at the end; warm-up {args.warmup:g} s"
    )
    print("uploads: " + ", ".join(f"{m.split(', ')[1]} {len(u)} bytes" for m, u in uploads.items()))

    tiers = ["gateway", "model server", "Cassandra", "load generator"]

    def each(c: int, mode: str, name: str) -> list[float]:
        """One figure of a level, in every run (ratios against the same run's direct level)."""
        return [figures(results[c][mode], results[c][DIRECT], tiers)[name] for results in runs]

    modes = list(runs[0][levels[0]])
    print(f"each figure is the range over {args.runs} run(s)")
    header = (
        f"{'conc':>4}  {'path':<28} {'req/s':>9} {'p50 ms':>11} {'p99 ms':>13} {'errors':>6} "
        f"{'vs direct':>9} {'p50 overhead ms':>15}"
    )
    print(header)
    print("-" * len(header))
    for c in levels:
        for mode in modes:
            errors = sum(each(c, mode, "errors"))
            ratio = span(each(c, mode, "ratio")) if mode != DIRECT else ""
            overhead = span(each(c, mode, "overhead")) if mode != DIRECT else ""
            print(
                f"{c:>4}  {mode:<28} {span(each(c, mode, 'rps'), '{:.0f}'):>9} "
                f"{span(each(c, mode, 'p50')):>11} "
                f"{span(each(c, mode, 'p99')):>13} {errors:>6.0f} "
                f"{ratio:>9} {overhead:>15}"
            )
    print("\nCPU time per request (ms), by tier; all tiers share the same cores here")
    header = f"{'conc':>4}  {'path':<28} " + " ".join(f"{t:>14}" for t in tiers) + f" {'total':>11}"
    print(header)
    print("-" * len(header))
    for c in levels:
        for mode in modes:
            cells = " ".join(f"{span(each(c, mode, t)):>14}" for t in tiers)
            total = span(each(c, mode, "total"))
            print(f"{c:>4}  {mode:<28} {cells} {total:>11}")
    print(
        "\nimages per Predict call from the gateway (concurrent requests share calls): "
        + ", ".join(f"c{c} {mode.split(', ')[1]} {span(n)}" for (c, mode), n in images_per_call.items())
    )
    print(
        f"\ngateway start to /healthz: {ready_s:.2f} s; worker RSS: "
        + ", ".join(f"{m:.0f} MB" for m in worker_rss)
        + f"; {', '.join(depth) or 'spool depth n/a'}"
    )
    cpu_goals = {"gateway, 28x28 PNG": 1.5, "gateway, 280x280 canvas PNG": 3.0}
    for c in levels:
        for mode, goal in cpu_goals.items():
            cpu_ms = span(each(c, mode, "gateway"))
            overhead = span(each(c, mode, "overhead"))
            ratio = span(each(c, mode, "ratio"))
            print(
                f"goals at concurrency {c} ({mode}): gateway CPU {cpu_ms} ms (<= {goal:g})"
                + (f", median overhead {overhead} ms (<= 2)" if c == 1 else "")
                + (f", throughput {ratio} of direct (>= 0.50)" if c == 8 else "")
            )
    for (c, mode), stacks in profiles.items():
        print(f"\nprofile of the gateway worker, concurrency {c}, {mode} (all runs):")
        print(profile.top_table(stacks))
    if args.json:
        payload = [
            {
                str(c): {mode: asdict(level) | {"rps": level.rps} for mode, level in by_mode.items()}
                for c, by_mode in results.items()
            }
            for results in runs
        ]
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


def figures(level: Level, direct: Level, tiers: list[str]) -> dict[str, float]:
    """What the tables print of one level, by name (CPU per request by tier under the tier's name)."""
    return {
        "rps": level.rps,
        "p50": level.p50_ms,
        "p99": level.p99_ms,
        "errors": level.errors,
        "ratio": level.rps / direct.rps,
        "overhead": level.p50_ms - direct.p50_ms,
        "total": sum(level.cpu_ms.values()),
        **{tier: level.cpu_ms.get(tier, 0.0) for tier in tiers},
    }


def span(values: list[float], form: str = "{:.2f}") -> str:
    """The range of a figure over the runs: `low-high`, or one value when they agree."""
    low, high = form.format(min(values)), form.format(max(values))
    return low if low == high else f"{low}-{high}"


def scrape(port: int) -> str:
    """The gateway's /metrics."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", "/metrics")
        return connection.getresponse().read().decode()
    finally:
        connection.close()


def shared_calls(metrics: str) -> tuple[float, float]:
    """(images, Predict calls) so far, from the gateway's batch-size histogram."""
    totals = {"gateway_model_batch_size_sum": 0.0, "gateway_model_batch_size_count": 0.0}
    for line in metrics.splitlines():
        name, _, value = line.partition(" ")
        if name in totals:
            totals[name] = float(value)
    return totals["gateway_model_batch_size_sum"], totals["gateway_model_batch_size_count"]


if __name__ == "__main__":
    sys.exit(main())
