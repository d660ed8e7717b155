"""What hostile requests cost `mnist-serve` with its default limits, against one normal Predict.

    python -m bench.serving_hostile [--repeat 3] [--slow-clients 1000] [--model-base-path DIR]

Each pattern is sent `--repeat` times; the server's CPU time (utime + stime from /proc, all threads) and its
peak RSS (VmHWM, reset before each pattern through /proc/PID/clear_refs) are read around it. Patterns:

- normal: one 28x28 image over gRPC (the baseline);
- grpc-rank-bomb: a 1x28x28x4e10 uint8 tensor declared with one value (refused before allocating);
- grpc-batch-bomb: 4e10x28x28 with one value (right rank, over --max_tensor_bytes);
- grpc-largest: the largest tensor accepted (--max_tensor_bytes of uint8 images, from one value: TF's fill
  rule), run through the model;
- rest-deep-json: 100,000 nested brackets;
- rest-largest: the largest JSON body accepted (--rest_api_max_body_bytes) of zero images: parsed, then
  over the tensor limit;
- slowloris: `--slow-clients` connections sending a header byte every 0.2 s for 10 s, then a normal REST
  request: its latency, and the server's thread count.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def status_value(pid: int, key: str) -> int:
    line = next(ln for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ln.startswith(key))
    return int(line.split()[1])


def measure(pid: int, name: str, call: Callable[[], str], repeat: int) -> None:
    cpu, wall, peak, outcome = [], [], [], ""
    for _ in range(repeat):
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset the peak RSS
        cpu_before, started = cpu_seconds(pid), time.perf_counter()
        outcome = call()
        wall.append(time.perf_counter() - started)
        cpu.append(cpu_seconds(pid) - cpu_before)
        peak.append(status_value(pid, "VmHWM:") / 1024)
    print(
        f"| {name} | {outcome} | {min(cpu) * 1000:.0f}-{max(cpu) * 1000:.0f} | "
        f"{min(wall) * 1000:.0f}-{max(wall) * 1000:.0f} | {min(peak):.0f}-{max(peak):.0f} |",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.serving_hostile", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--slow-clients", type=int, default=1000)
    parser.add_argument("--model-base-path", type=Path, default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    import grpc
    import requests
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    sys.path.insert(0, str(REPO_ROOT))
    from bench.serving import model_base_path
    from serving.local_server.flags import ServerFlags
    from tests.fixtures.model_server import ModelServerProcess

    def request(shape: list[int], **values) -> predict_pb2.PredictRequest:
        message = predict_pb2.PredictRequest()
        message.model_spec.name = "mnist"
        message.inputs["image"].CopyFrom(
            tensor_pb2.TensorProto(
                dtype=types_pb2.DT_UINT8,
                tensor_shape=tensor_shape_pb2.TensorShapeProto(
                    dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=s) for s in shape]
                ),
                **values,
            )
        )
        return message

    scratch = Path(tempfile.mkdtemp(prefix="bench-serving-hostile-"))
    server = None
    try:
        base, described = model_base_path(args.model_base_path, scratch)
        print(f"model: {described}; mnist-serve with default limits", flush=True)
        server = ModelServerProcess(base, None, scratch / "serve.log", extra_args=["--log_level=ERROR"])
        server.start()
        pid = server.process.pid
        channel = grpc.insecure_channel(
            server.grpc_address, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        )
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        predict_url = f"{server.rest_url}/v1/models/mnist:predict"

        def grpc_call(message: predict_pb2.PredictRequest) -> Callable[[], str]:
            def call() -> str:
                try:
                    stub.Predict(message, timeout=600)
                    return "OK"
                except grpc.RpcError as error:
                    return error.code().name

            return call

        def rest_call(body: bytes) -> Callable[[], str]:
            return lambda: str(requests.post(predict_url, data=body, timeout=600).status_code)

        largest_images = ServerFlags().max_tensor_bytes // (28 * 28)
        image_json = "[" + ",".join(["[" + ",".join(["0"] * 28) + "]"] * 28) + "]"
        max_body = ServerFlags().rest_api_max_body_bytes
        images_in_body = (max_body - 100) // (len(image_json) + 1)
        largest_body = ('{"instances":[' + ",".join([image_json] * images_in_body) + "]}").encode()
        assert len(largest_body) <= max_body, len(largest_body)
        print("| pattern | answer | server CPU ms | wall ms | server peak RSS MiB |")
        print("|---|---|---|---|---|")
        measure(pid, "normal (1 image, gRPC)", grpc_call(request([1, 28, 28], int_val=[3])), args.repeat)
        measure(
            pid, "grpc-rank-bomb", grpc_call(request([1, 28, 28, 40_000_000_000], int_val=[0])), args.repeat
        )
        measure(
            pid, "grpc-batch-bomb", grpc_call(request([40_000_000_000, 28, 28], int_val=[0])), args.repeat
        )
        measure(
            pid,
            f"grpc-largest ({largest_images} images)",
            grpc_call(request([largest_images, 28, 28], int_val=[0])),
            args.repeat,
        )
        measure(pid, "rest-deep-json", rest_call(b"[" * 100_000 + b"]" * 100_000), args.repeat)
        measure(
            pid,
            f"rest-largest ({len(largest_body) >> 20} MiB, {images_in_body} images)",
            rest_call(largest_body),
            args.repeat,
        )

        stop = threading.Event()

        def slow_client() -> None:
            while not stop.is_set():
                try:
                    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=10) as sock:
                        sock.sendall(b"GET /v1/models/mnist HTTP/1.1\r\n")
                        while not stop.wait(0.2):
                            sock.sendall(b"X")
                except OSError:
                    continue

        def slowloris() -> str:
            clients = [threading.Thread(target=slow_client, daemon=True) for _ in range(args.slow_clients)]
            for client in clients:
                client.start()
            time.sleep(10)  # the attack runs for a fixed time; what is measured is the normal request below
            threads = status_value(pid, "Threads:")
            started = time.perf_counter()
            status = requests.get(f"{server.rest_url}/v1/models/mnist", timeout=60).status_code
            latency = (time.perf_counter() - started) * 1000
            stop.set()
            for client in clients:
                client.join(10)
            stop.clear()
            return f"{status} in {latency:.0f} ms, server threads {threads}"

        measure(pid, f"slowloris ({args.slow_clients} connections, 10 s)", slowloris, 1)
        channel.close()
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
