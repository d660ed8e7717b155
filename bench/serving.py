"""mnist-serve Predict latency and throughput against the same SavedModel called in-process.

    python -m bench.serving [--seconds 5] [--concurrency 1,8,32] [--model-base-path DIR] [--rows 1]

Measured in one run, for the same wall-clock duration at each concurrency (client threads in this process):

- in-process: the SavedModel's `serving_default` called directly (tf.saved_model.load), the baseline: what
  serving costs with no server at all;
- grpc: `mnist-serve` over gRPC with the official `tensorflow_serving.apis` stub (one shared channel);
- grpc+batching: the same with `--enable_batching` (max_batch_size 32, batch_timeout_micros 1000,
  num_batch_threads 2).

Each request carries `--rows` images (default 1, what the gateway sends). The model is `--model-base-path`,
else the full default model found by bench/models.py, else a quick export made by the training code.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.models import default_model_base, versions
from training.contract import version_dirs

REPO_ROOT = Path(__file__).resolve().parents[1]
BATCHING = (
    "max_batch_size { value: 32 }\n"
    "batch_timeout_micros { value: 1000 }\n"
    "max_enqueued_batches { value: 100 }\n"
    "num_batch_threads { value: 2 }\n"
)


@dataclass
class Level:
    mode: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def measure(mode: str, call: Callable[[], None], concurrency: int, seconds: float) -> Level:
    """Run `call` from `concurrency` threads for `seconds` (after a short warm-up); collect latencies."""
    for _ in range(3):
        call()
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    start = threading.Barrier(concurrency + 1)
    stop_at = 0.0

    def worker(index: int) -> None:
        start.wait()
        own = latencies[index]
        while True:
            began = time.perf_counter()
            if began >= stop_at:
                return
            try:
                call()
            except Exception:
                errors[index] += 1
                continue
            own.append(time.perf_counter() - began)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    began = time.perf_counter()
    stop_at = began + seconds
    start.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    flat = sorted(x for own in latencies for x in own)
    if not flat:
        return Level(mode, concurrency, 0, sum(errors), elapsed, float("nan"), float("nan"))
    p99 = flat[min(len(flat) - 1, int(len(flat) * 0.99))]
    return Level(mode, concurrency, len(flat), sum(errors), elapsed, statistics.median(flat) * 1e3, p99 * 1e3)


def model_base_path(explicit: Path | None, scratch: Path) -> tuple[Path, str]:
    if explicit is not None:
        return explicit, f"{explicit} (--model-base-path)"
    default = default_model_base()
    if default is not None:
        return default, f"{default} (the full default model, version {versions(default)[-1]})"
    sys.path.insert(0, str(REPO_ROOT))
    from tests.fixtures.models import export_quick_version  # the training code's quick settings

    export_quick_version(scratch / "models")
    return scratch / "models", "a quick export (1 epoch on 6000 samples; no default model found)"


def latest_version(base: Path) -> Path:
    versions = version_dirs(base / "mnist")
    return versions[max(versions)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serving", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measurement time per level")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated client thread counts")
    parser.add_argument("--rows", type=int, default=1, help="images per request")
    parser.add_argument("--model-base-path", type=Path, default=None)
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.concurrency.split(",")]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    sys.path.insert(0, str(REPO_ROOT))
    from tests.fixtures.model_server import ModelServerProcess

    scratch = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    try:
        base, described = model_base_path(args.model_base_path, scratch)
        version_dir = latest_version(base)
        print(f"model: {described}; serving version {version_dir.name}", flush=True)
        images = np.random.default_rng(0).integers(0, 256, size=(args.rows, 28, 28), dtype=np.uint8)

        signature = tf.saved_model.load(str(version_dir)).signatures["serving_default"]

        def in_process() -> None:
            signature(image=tf.constant(images))["digit"].numpy()

        results = [measure("in-process", in_process, c, args.seconds) for c in levels]

        request = predict_pb2.PredictRequest()
        request.model_spec.name = "mnist"
        request.inputs["image"].CopyFrom(tf.make_tensor_proto(images))
        batching_file = scratch / "batching.txt"
        batching_file.write_text(BATCHING)
        for mode, extra in (
            ("grpc", []),
            ("grpc+batching", ["--enable_batching", f"--batching_parameters_file={batching_file}"]),
        ):
            server = ModelServerProcess(
                base, None, scratch / f"{mode}.log", extra_args=extra + ["--log_level=WARNING"]
            )
            server.start()
            channel = grpc.insecure_channel(server.grpc_address)
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

            def over_grpc(stub=stub) -> None:
                stub.Predict(request, timeout=30)

            try:
                results += [measure(mode, over_grpc, c, args.seconds) for c in levels]
            finally:
                channel.close()
                server.stop()
        print_table(results)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


def print_table(results: list[Level]) -> None:
    baseline = {r.concurrency: r for r in results if r.mode == "in-process"}
    header = f"{'mode':<15}{'conc':>5}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'rps/in-proc':>13}"
    print(header + f"{'p50/in-proc':>13}")
    print("-" * (len(header) + 13))
    for r in results:
        base = baseline.get(r.concurrency)
        rps_ratio = r.rps / base.rps if base and base.rps else float("nan")
        p50_ratio = r.p50_ms / base.p50_ms if base and base.p50_ms else float("nan")
        print(
            f"{r.mode:<15}{r.concurrency:>5}{r.rps:>10.0f}{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}{r.errors:>8}"
            f"{rps_ratio:>13.2f}{p50_ratio:>13.2f}"
        )


if __name__ == "__main__":
    sys.exit(main())
