"""Start-up time and memory of a process that can call the model server: our protos vs the official client.

    python -m bench.startup [--runs 5]

Each variant runs in a fresh interpreter (several runs, medians): the wall time from spawning the process
until it has imported the client and built a stub on a channel, the in-process import time, and the resident
memory at that point (VmRSS) and at its peak (VmHWM). Baselines in the same run: a bare `python -c pass`,
and the official `tensorflow_serving.apis` client (which imports TensorFlow) -- what a gateway worker would
pay per process without the project's own protos.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

_PROBE = """
import time, json
started = time.perf_counter()
{code}
elapsed = time.perf_counter() - started
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
kib = lambda key: int(status[key].split()[0])
print(json.dumps({{"import_s": elapsed, "rss_kib": kib("VmRSS"), "hwm_kib": kib("VmHWM")}}))
"""

VARIANTS: dict[str, str] = {
    "python (bare interpreter)": "pass",
    "gateway ModelClient (own protos)": (
        "from gateway.model_client import ModelClient\nclient = ModelClient('127.0.0.1:8500'); client._rpcs()"
    ),
    "gateway ModelClient + preprocess": (
        "from gateway.model_client import ModelClient\n"
        "from gateway.preprocess import to_mnist\n"
        "client = ModelClient('127.0.0.1:8500'); client._rpcs()"
    ),
    "official tensorflow_serving.apis": (
        "import grpc\n"
        "from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc\n"
        "stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel('127.0.0.1:8500'))"
    ),
    "official + tf.make_tensor_proto": (
        "import grpc\n"
        "import tensorflow as tf\n"
        "from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc\n"
        "stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel('127.0.0.1:8500'))\n"
        "tf.make_tensor_proto([1, 2, 3])"
    ),
}
OURS, OFFICIAL = "gateway ModelClient (own protos)", "official tensorflow_serving.apis"


def measure(code: str) -> dict[str, float]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _PROBE.format(code=code)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO_ROOT)},
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"probe failed: {done.stderr.strip().splitlines()[-1:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per variant (default 5)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    medians: dict[str, dict[str, float]] = {}
    for name, code in VARIANTS.items():
        runs = [measure(code) for _ in range(args.runs)]
        medians[name] = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        print(f"  measured {name} ({args.runs} runs)", file=sys.stderr)

    header = f"{'variant':<36}{'process s':>10}{'import s':>10}{'RSS MiB':>9}{'peak MiB':>10}"
    print(header)
    print("-" * len(header))
    for name, m in medians.items():
        print(
            f"{name:<36}{m['wall_s']:>10.3f}{m['import_s']:>10.3f}"
            f"{m['rss_kib'] / 1024:>9.1f}{m['hwm_kib'] / 1024:>10.1f}"
        )
    ours, official = medians[OURS], medians[OFFICIAL]
    print("-" * len(header))
    print(
        f"official / ours: process start {official['wall_s'] / ours['wall_s']:.1f}x, "
        f"import {official['import_s'] / ours['import_s']:.1f}x, "
        f"RSS {official['rss_kib'] / ours['rss_kib']:.1f}x "
        f"({(official['rss_kib'] - ours['rss_kib']) / 1024:.0f} MiB more per worker process)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
