"""The gateway's floor: the smallest gateways built from the same stack against `mnist-gateway`, same run.

    python -m bench.gateway_floor [--runs 3] [--seconds 6] [--warmup 30] [--concurrency 1,8]
                                  [--model-base-path DIR] [--json FILE]

What does `mnist-gateway` cost per request beyond what Flask under Granian, a Pillow decode and one gRPC
Predict cost anyway? With bench/gateway.py's helpers it brings up a real Cassandra node (migrated keyspace)
and `mnist-serve` with the model (`--model-base-path`, else the default model found by bench/models.py, else
a quick export by `mnist-train`), then four gateways side by side on free ports, each Granian with 1 worker
x 16 threads:

- A, B, C: the floor variants of bench/floor_app.py. A decodes, predicts and answers; B also writes the
  store's two INSERTs from a thread (unlogged batches, 50 ms linger, nothing on disk); C records through
  the project's `PredictionStore` (write-ahead log with fdatasync, shipper, counters);
- mnist-gateway: the real one (preprocessing, routing, metrics, logs, the same store).

Every configuration gets the same upload, a 28x28 MNIST digit PNG as a multipart `image` field (as browsers
send it), from http.client keep-alive threads in this process. First the real gateway takes `--warmup`
seconds of load at concurrency 8 (a fresh Cassandra JVM spends its first minute compiling), then each floor
variant 3 s. Every run measures each concurrency level on every configuration in turn, in an order that
rotates from run to run. It prints the CPU time the gateway's worker process spent per request (from /proc;
all tiers share the same cores), req/s, and each floor variant's CPU as a fraction of the real gateway's in
the same run, each as the range over the `--runs` runs. Cassandra's CPU per request shows the rows being
written (B, C, mnist-gateway) or not (A).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path

from bench.gateway import (
    KEYSPACE,
    REPO_ROOT,
    CpuMeter,
    Level,
    gateway_call,
    migrated_node,
    mnist_digit,
    png_bytes,
    resolve_models,
    run_level,
    serve_newest,
    span,
    worker_pids,
)

REAL = "mnist-gateway"
CONFIGS = {  # name -> what the table calls it
    "A": "A: decode, Predict, JSON",
    "B": "B: A + 2 INSERTs, batched",
    "C": "C: A + PredictionStore",
    REAL: "mnist-gateway",
}
FLOOR_WARMUP_S = 3.0
BOUNDARY = "benchfloor7MA4YWxkTrZu0gW"


def multipart(png: bytes) -> tuple[bytes, str]:
    """`png` as a browser's form sends it: the body and its Content-Type."""
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="digit.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    )
    body = head.encode() + png + f"\r\n--{BOUNDARY}--\r\n".encode()
    return body, f"multipart/form-data; boundary={BOUNDARY}"


class FloorProcess:
    """`python -m bench.floor_app` (Granian, its own session) with one FLOOR_VARIANT on a free port."""

    def __init__(self, variant: str, env: dict[str, str], log_path: Path) -> None:
        from deploy.local.readiness import free_port

        self.port = free_port()
        self._log = open(log_path, "ab")  # noqa: SIM115 - the child's; closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.floor_app"],
            env={**os.environ, **env, "FLOOR_VARIANT": variant, "FLOOR_PORT": str(self.port)},
            cwd=REPO_ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(15)
        with contextlib.suppress(ProcessLookupError):  # whatever is left of its session
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()


def first_answer(port: int, body: bytes, content_type: str, proc: subprocess.Popen) -> dict:
    """The first 200 answer to the upload (within 60 s), as JSON."""
    deadline, last = time.monotonic() + 60, ""
    while time.monotonic() < deadline and proc.poll() is None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            connection.request("POST", "/v1/predict", body=body, headers={"Content-Type": content_type})
            response = connection.getresponse()
            last = response.read().decode(errors="replace")
            if response.status == 200:
                return json.loads(last)
        except OSError as exc:
            last = str(exc)
        finally:
            connection.close()
        time.sleep(0.2)
    raise RuntimeError(f"no answer on port {port} (exit code {proc.poll()}): {last[:300]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gateway_floor", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--runs", type=int, default=3, help="measured runs of every level (default 3)")
    parser.add_argument("--seconds", type=float, default=6.0, help="measured duration per level (default 6)")
    parser.add_argument("--concurrency", default="1,8", help="comma-separated levels (default 1,8)")
    parser.add_argument(
        "--warmup",
        type=float,
        default=30.0,
        help=f"seconds of load on mnist-gateway before measuring (default 30), then {FLOOR_WARMUP_S:g} s "
        "on each floor variant",
    )
    parser.add_argument("--model-base-path", type=Path, help="base dir holding mnist/<version>/")
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    if args.runs < 1 or not levels or min(levels) < 1:
        parser.error("--runs and every --concurrency level must be >= 1")

    # Test helpers that start the real processes on free ports (the same code the e2e tests use).
    sys.path.insert(0, str(REPO_ROOT))
    from gateway.store.cluster import quiet_driver_logs
    from tests.fixtures.gateway_server import GatewayProcess, gateway_environment

    quiet_driver_logs()
    png = png_bytes(mnist_digit(0))
    body, content_type = multipart(png)
    with ExitStack() as stack:
        scratch = Path(tempfile.mkdtemp(prefix="bench-gateway-floor-"))
        stack.callback(shutil.rmtree, scratch, True)
        models = resolve_models(args.model_base_path, scratch)
        node = migrated_node(stack, scratch)
        server, version = serve_newest(stack, models, scratch)

        print(
            "starting the floor variants A, B, C and mnist-gateway (1 worker x 16 threads each) ...",
            flush=True,
        )
        masters, ports, digits = {}, {}, {}
        for name in CONFIGS:
            if name == REAL:
                env = gateway_environment(
                    server,
                    node,
                    KEYSPACE,
                    scratch / "spool",
                    GATEWAY_WORKERS="1",
                    GATEWAY_THREADS="16",
                    LOG_LEVEL="WARNING",
                )
                gateway = GatewayProcess(env, scratch / "gateway.log").start()
                stack.callback(gateway.stop)
                proc, ports[name] = gateway.proc, gateway.port
            else:
                floor = FloorProcess(
                    name,
                    {
                        "MODEL_SERVER_GRPC": server.grpc_address,
                        "CASSANDRA_HOSTS": node.host,
                        "CASSANDRA_PORT": str(node.port),
                        "CASSANDRA_USERNAME": node.credentials.username,
                        "CASSANDRA_PASSWORD": node.credentials.password,
                        "CASSANDRA_KEYSPACE": KEYSPACE,
                        "FLOOR_SPOOL_DIR": str(scratch / f"spool-{name}"),
                    },
                    scratch / f"floor-{name}.log",
                )
                stack.callback(floor.stop)
                proc, ports[name] = floor.proc, floor.port
            masters[name] = proc.pid
            digits[name] = first_answer(ports[name], body, content_type, proc)["digit"]
        if len(set(digits.values())) != 1:
            raise RuntimeError(f"the configurations disagree on the digit: {digits}")

        calls = {name: gateway_call(port, body, content_type) for name, port in ports.items()}
        meters = {
            name: CpuMeter(
                lambda master=master: {"gateway": worker_pids(master), "Cassandra": [node.process.pid]}
            )
            for name, master in masters.items()
        }
        if args.warmup > 0:
            print(
                f"warming up for {args.warmup:g} s (mnist-gateway, concurrency 8), then the floors ...",
                flush=True,
            )
            run_level(8, args.warmup, calls[REAL])
            for name in CONFIGS:
                if name != REAL:
                    run_level(8, FLOOR_WARMUP_S, calls[name])

        names = list(CONFIGS)
        runs: list[dict[int, dict[str, Level]]] = []
        load: list[float] = []
        for run in range(args.runs):
            results: dict[int, dict[str, Level]] = {}
            runs.append(results)
            order = names[run % len(names) :] + names[: run % len(names)]
            for c in levels:
                print(f"run {run + 1}/{args.runs}, concurrency {c}: {', '.join(order)} ...", flush=True)
                results[c] = {}
                for name in order:
                    results[c][name] = run_level(c, args.seconds, calls[name], meters[name])
                    load.append(os.getloadavg()[0])
        problems = [
            f"{path.name}: {line}"
            for path in sorted(scratch.glob("floor-*.log"))
            for line in path.read_text(errors="replace").splitlines()
            if "fail" in line.lower() or "Traceback" in line
        ]

    print()
    print(
        f"model: {models}/mnist/{version}; each gateway: 1 worker x 16 threads; {args.seconds:g} s per "
        f"level; {os.cpu_count()} CPUs shared by load generators and servers; warm-up {args.warmup:g} s"
    )
    print(
        f"load average (1 min) {min(load):.1f}-{max(load):.1f} over the measured levels, "
        f"{os.getloadavg()[0]:.1f} at the end; upload: 28x28 PNG ({len(png)} bytes) as multipart `image` "
        f"({len(body)} bytes)"
    )

    def each(c: int, name: str, figure: str) -> list[float]:
        """One figure of a level, in every run (ratios against the same run's mnist-gateway level)."""
        values = []
        for results in runs:
            level, real = results[c][name], results[c][REAL]
            values.append(
                {
                    "cpu": level.cpu_ms["gateway"],
                    "ratio": level.cpu_ms["gateway"] / real.cpu_ms["gateway"],
                    "rps": level.rps,
                    "p50": level.p50_ms,
                    "cassandra": level.cpu_ms["Cassandra"],
                    "errors": level.errors,
                }[figure]
            )
        return values

    print(
        "\ngateway worker CPU per request (ms), and as a fraction of mnist-gateway's in the same run; "
        f"ranges over {args.runs} run(s)"
    )
    header = (
        f"{'conc':>4}  {'configuration':<26} {'gateway CPU ms':>14} {'vs real':>9} {'req/s':>9} "
        f"{'p50 ms':>11} {'Cassandra CPU ms':>16} {'errors':>6}"
    )
    print(header)
    print("-" * len(header))
    for c in levels:
        for name, label in CONFIGS.items():
            ratio = span(each(c, name, "ratio")) if name != REAL else ""
            print(
                f"{c:>4}  {label:<26} {span(each(c, name, 'cpu')):>14} {ratio:>9} "
                f"{span(each(c, name, 'rps'), '{:.0f}'):>9} {span(each(c, name, 'p50')):>11} "
                f"{span(each(c, name, 'cassandra')):>16} {sum(each(c, name, 'errors')):>6.0f}"
            )
    if problems:
        print("\nfrom the floor variants' logs:\n" + "\n".join(problems[-20:]))
    if args.json:
        payload = [
            {
                str(c): {name: asdict(level) | {"rps": level.rps} for name, level in by_name.items()}
                for c, by_name in results.items()
            }
            for results in runs
        ]
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
