"""mnist-serve against hostile callers: tensors that declare more than they carry, deep JSON, unknown HTTP
methods, and clients that connect and then send slowly or nothing at all.

The server runs with small limits (HOSTILE_LIMITS: 4 images per tensor, 8 connections, a 2 s request
deadline) so that each limit is tested just under and just over without moving megabytes.
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import threading
import time
import tracemalloc
from pathlib import Path

import grpc
import pytest
import requests
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from serving.local_server import rest_api
from serving.local_server.rest_api import MAX_JSON_DEPTH
from tests.fixtures.model_server import HOSTILE_LIMITS, PATIENT_LIMITS, limited_model_server
from tests.waiting import eventually

TIMEOUT = 10
IMAGE_BYTES = 28 * 28
MAX_IMAGES = HOSTILE_LIMITS["max_tensor_bytes"] // IMAGE_BYTES
MAX_CONNECTIONS = HOSTILE_LIMITS["rest_api_max_connections"]
REQUEST_DEADLINE_S = HOSTILE_LIMITS["rest_api_timeout_in_ms"] / 1000


@pytest.fixture(scope="module")
def server(hostile_model_server):
    return hostile_model_server


@pytest.fixture(scope="module")
def patient_server(model_base_path, tmp_path_factory):
    """HOSTILE_LIMITS with a deadline that never strikes during a test: for the tests that must tell the
    slots' and the connection table's effects apart from the deadline's, however loaded the machine."""
    root = tmp_path_factory.mktemp("patient-server")
    with limited_model_server(model_base_path, root, PATIENT_LIMITS) as server:
        yield server


@pytest.fixture(scope="module")
def predict(server):
    channel = grpc.insecure_channel(server.grpc_address)
    yield prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict
    channel.close()


def declared_tensor(shape, dtype=types_pb2.DT_UINT8, **values) -> tensor_pb2.TensorProto:
    """A TensorProto whose shape says whatever we like, whatever values it carries."""
    return tensor_pb2.TensorProto(
        dtype=dtype,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=int(s)) for s in shape]
        ),
        **values,
    )


def request_with(tensor: tensor_pb2.TensorProto) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "mnist"
    request.inputs["image"].CopyFrom(tensor)
    return request


def rpc_error(predict, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        predict(request, timeout=TIMEOUT)
    return caught.value


# -- tensors: declared sizes are checked before anything is allocated --------------------------------------
BOMBS = {
    # the reported one: a fourth dimension of 4e10 and a single value to "fill" it with
    "rank_and_size": declared_tensor([1, 28, 28, 40_000_000_000], int_val=[0]),
    "batch_of_4e10": declared_tensor([40_000_000_000, 28, 28], int_val=[7]),
    "int64_overflow": declared_tensor([2**62, 28, 28], int_val=[1]),
    "content_for_a_huge_shape": declared_tensor([2**40, 28, 28], tensor_content=b"\0" * 784),
    "float_bomb": declared_tensor([40_000_000_000, 28, 28], types_pb2.DT_FLOAT, float_val=[0.5]),
    "string_bomb": declared_tensor([40_000_000_000, 28, 28], types_pb2.DT_STRING, string_val=[b"x"]),
    "rank_100": declared_tensor([1] * 100, int_val=[0]),
    "negative": declared_tensor([-1, 28, 28], int_val=[0]),
    "unsupported_dtype": declared_tensor([1, 28, 28], types_pb2.DT_COMPLEX64),
}


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_declared_tensor_bombs_are_invalid_argument(predict, name):
    error = rpc_error(predict, request_with(BOMBS[name]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert "image" in error.details()


def test_the_tensor_limit_just_under_and_just_over(predict):
    ok = predict(request_with(declared_tensor([MAX_IMAGES, 28, 28], int_val=[3])), timeout=TIMEOUT)
    assert ok.outputs["digit"].tensor_shape.dim[0].size == MAX_IMAGES
    error = rpc_error(predict, request_with(declared_tensor([MAX_IMAGES + 1, 28, 28], int_val=[3])))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"{(MAX_IMAGES + 1) * IMAGE_BYTES} bytes" in error.details()
    assert f"limit of {MAX_IMAGES * IMAGE_BYTES}" in error.details()


def test_the_tensor_limit_applies_to_rest_too(server):
    url = f"{server.rest_url}/v1/models/mnist:predict"
    image = [[0] * 28] * 28
    assert requests.post(url, json={"instances": [image] * MAX_IMAGES}, timeout=TIMEOUT).status_code == 200
    response = requests.post(url, json={"instances": [image] * (MAX_IMAGES + 1)}, timeout=TIMEOUT)
    assert response.status_code == 400 and "limit of" in response.json()["error"]


# -- JSON nesting ------------------------------------------------------------------------------------------
def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 1000, 100_000])
def test_deep_json_is_a_400(server, depth):
    body = b'{"instances": ' + nested(depth - 1) + b"}"
    response = requests.post(f"{server.rest_url}/v1/models/mnist:predict", data=body, timeout=TIMEOUT)
    assert response.status_code == 400
    assert f"nested deeper than {MAX_JSON_DEPTH}" in response.json()["error"]


def test_json_at_the_depth_limit_is_parsed(server):
    body = b'{"instances": ' + nested(MAX_JSON_DEPTH - 1) + b"}"
    response = requests.post(f"{server.rest_url}/v1/models/mnist:predict", data=body, timeout=TIMEOUT)
    assert response.status_code == 400
    assert "nested deeper" not in response.json()["error"]  # refused for its shape, after parsing


def test_brackets_inside_strings_do_not_count_as_depth(server):
    body = b'{"signature_name": "' + b"[" * 10_000 + b'", "instances": [' + nested(2) + b"]}"
    response = requests.post(f"{server.rest_url}/v1/models/mnist:predict", data=body, timeout=TIMEOUT)
    assert response.status_code == 400
    assert "nested deeper" not in response.json()["error"]


def test_depth_is_counted_across_the_chunks_it_is_summed_in():
    chunk = rest_api._DEPTH_CHUNK
    assert rest_api.json_depth(b"[[" + b" " * chunk + b"[]]]") == 3
    assert rest_api.json_depth(b" " * (chunk - 1) + b"[[]][[[]]]") == 3
    assert rest_api.json_depth(b"]]]" + b"[" * 5) == 2  # unbalanced: what the parser then refuses


def test_measuring_depth_takes_less_memory_than_parsing():
    """Parsing this body peaks at about 5 bytes per body byte; measuring its depth first costs less."""
    body = b'{"instances": [[' + b"0," * (4 << 20) + b"0]]}"  # 8 MiB, at the default body limit
    tracemalloc.start()
    try:
        assert rest_api.json_depth(body) == 3
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * len(body), f"{peak / len(body):.1f} bytes per body byte"


# -- methods -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "status"),
    [("PUT", 405), ("DELETE", 405), ("PATCH", 405), ("OPTIONS", 405), ("TRACE", 405), ("FOO", 501)],
)
def test_unsupported_methods_answer_json_405_or_501(server, method, status):
    response = requests.request(method, f"{server.rest_url}/v1/models/mnist", timeout=TIMEOUT)
    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/json"
    assert method in response.json()["error"]
    if status == 405:
        assert response.headers["Allow"] == "GET, POST"


def test_head_is_405_without_a_body(server):
    response = requests.head(f"{server.rest_url}/v1/models/mnist", timeout=TIMEOUT)
    assert response.status_code == 405 and response.content == b""


# -- slow and silent clients -------------------------------------------------------------------------------
def rest_connection(server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.rest_port), timeout=TIMEOUT)


def closed_by_server_within(sock: socket.socket, seconds: float) -> float:
    """Seconds until the server closed `sock` (reads until EOF or reset); fails after `seconds`."""
    started = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the server kept a connection open for more than {seconds} s")
    return time.monotonic() - started


def test_a_silent_connection_is_closed_after_the_deadline(server):
    with rest_connection(server) as sock:
        waited = closed_by_server_within(sock, REQUEST_DEADLINE_S * 4)
    assert waited >= REQUEST_DEADLINE_S * 0.9


def test_a_request_trickled_a_byte_at_a_time_is_cut_at_the_deadline(server):
    request = b"POST /v1/models/mnist:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
    request += b"x" * 1000
    stop = threading.Event()
    with rest_connection(server) as sock:

        def trickle() -> None:
            for byte in request:
                if stop.wait(0.05):
                    return
                try:
                    sock.send(bytes([byte]))
                except OSError:
                    return

        sender = threading.Thread(target=trickle, daemon=True)
        sender.start()
        try:
            closed_by_server_within(sock, REQUEST_DEADLINE_S * 4)
        finally:
            stop.set()
            sender.join(5)


def answered_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server sent anything on `sock` within `seconds` (nothing is read)."""
    readable, _, _ = select.select([sock], [], [], seconds)
    return bool(readable)


def read_head(sock: socket.socket) -> bytes:
    """One response head (status line and headers) from `sock`, however the bytes are split."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        chunk = sock.recv(1)
        assert chunk, f"closed after {head!r}"
        head += chunk
    return head


def test_a_body_is_read_only_once_it_has_a_processing_slot(patient_server):
    """Bodies still arriving hold the processing slots, so at most that many bodies sit in memory. A client
    that sends `Expect: 100-continue` is told to send its body once it holds a slot: while partial bodies hold
    them all, a request waits (no 100), and it is answered as soon as a partial body's client hangs up."""
    head = (
        b"POST /v1/models/mnist:predict HTTP/1.1\r\nHost: x\r\n"
        b"Content-Length: %d\r\nExpect: 100-continue\r\n\r\n"
    )
    body = json.dumps({"instances": [[[0] * 28] * 28]}).encode()
    holders = [rest_connection(patient_server) for _ in range(PATIENT_LIMITS["rest_api_num_threads"])]
    try:
        for holder in holders:
            holder.sendall(head % 100000)
            assert read_head(holder) == b"HTTP/1.1 100 Continue\r\n\r\n"  # it holds a slot now
            holder.sendall(b"{")
        with rest_connection(patient_server) as sock:
            sock.sendall(head % len(body))
            # The holders' deadline is minutes away: nothing but a freed slot could ask for this body...
            assert not answered_within(sock, 1.0)
            holders.pop().close()
            # ...and a freed slot asks for it at once, and answers.
            assert read_head(sock) == b"HTTP/1.1 100 Continue\r\n\r\n"
            sock.sendall(body)
            assert read_head(sock).startswith(b"HTTP/1.1 200")
    finally:
        for holder in holders:
            holder.close()


def server_threads(server) -> int:
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("Threads:")))


def test_slowloris_cannot_stop_a_normal_request(patient_server):
    """Four times the connection limit held open, each sending a header byte now and then and reconnecting
    when closed: the server's threads stay bounded and a normal request is still answered promptly. The
    deadline is minutes away, so only the connection table can be what bounds them."""
    server = patient_server
    baseline_threads = server_threads(server)
    stop = threading.Event()
    connected = threading.Semaphore(0)

    def attack() -> None:
        while not stop.is_set():
            try:
                with rest_connection(server) as sock:
                    connected.release()
                    sock.sendall(b"GET /v1/models/mnist HTTP/1.1\r\n")
                    while not stop.wait(0.2):
                        sock.sendall(b"X")
            except OSError:
                stop.wait(1.0)  # closed to make room: come back (each attacker about once a second)

    attackers = [threading.Thread(target=attack, daemon=True) for _ in range(MAX_CONNECTIONS * 4)]
    try:
        for thread in attackers:
            thread.start()
        for _ in attackers:
            assert connected.acquire(timeout=TIMEOUT)
        # Connections closed to make room end their threads: the count comes down to the bound.
        eventually(
            lambda: server_threads(server) <= baseline_threads + MAX_CONNECTIONS,
            what=f"at most {MAX_CONNECTIONS} connection threads over the {baseline_threads} at rest",
            timeout_s=30,
            interval_s=0.02,
        )
        for _ in range(5):
            started = time.monotonic()
            response = requests.get(f"{server.rest_url}/v1/models/mnist", timeout=TIMEOUT)
            assert response.status_code == 200
            assert time.monotonic() - started < TIMEOUT / 2
    finally:
        stop.set()
        for thread in attackers:
            thread.join(5)


def test_keep_alive_requests_still_work(server):
    connection = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=TIMEOUT)
    try:
        for _ in range(3):
            connection.request("GET", "/v1/models/mnist")
            response = connection.getresponse()
            assert response.status == 200 and b"AVAILABLE" in response.read()
    finally:
        connection.close()


# -- metrics labels ----------------------------------------------------------------------------------------
def test_unknown_model_names_do_not_create_metric_series(server, predict):
    """Each made-up model name in a request must not become a new `model_name` series (unbounded memory and
    scrape size): requests for models the server does not serve are counted under model_name=""."""
    names = [f"made-up-{i}" for i in range(20)]
    for name in names:
        requests.get(f"{server.rest_url}/v1/models/{name}", timeout=TIMEOUT)
        message = request_with(declared_tensor([1, 28, 28], int_val=[0]))
        message.model_spec.name = name
        assert rpc_error(predict, message).code() == grpc.StatusCode.NOT_FOUND
    page = requests.get(f"{server.rest_url}/monitoring/prometheus/metrics", timeout=TIMEOUT).text
    assert not [line for line in page.splitlines() if "made-up-" in line]
    assert 'model_name=""' in page and 'model_name="mnist"' in page


# -- found by probing: each was a 500, a hang, no answer, or a cost paid before the check ------------------
def test_more_values_than_the_shape_holds_are_refused_before_they_are_decoded(server, predict):
    """Counting the values costs nothing; converting them cost memory and CPU before the check."""
    request = request_with(declared_tensor([1, 28, 28], int_val=[1] * IMAGE_BYTES))
    assert predict(request, timeout=TIMEOUT).outputs["digit"].tensor_shape.dim[0].size == 1
    values = 40_000_000
    tensor = declared_tensor([1, 28, 28]).SerializeToString()
    tensor += b"\x3a" + varint(values) + b"\x01" * values  # int_val (field 7), packed: built as bytes
    entry = b"\x0a\x05image\x12" + varint(len(tensor)) + tensor  # inputs["image"]
    bomb = predict_pb2.PredictRequest(model_spec={"name": "mnist"}).SerializeToString()
    bomb += b"\x12" + varint(len(entry)) + entry
    with grpc.insecure_channel(server.grpc_address) as channel:
        raw_predict = channel.unary_unary("/tensorflow.serving.PredictionService/Predict")  # bytes in, out
        peak_before = peak_rss(server.process.pid)
        with pytest.raises(grpc.RpcError) as caught:
            raw_predict(bomb, timeout=60)
        grown = peak_rss(server.process.pid) - peak_before
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"{values} values" in caught.value.details()
    # Receiving and parsing the message alone takes about 460 MiB at its peak; converting the values took
    # another 300 MiB (and twice the CPU, which a busy machine blurs: memory is the steadier witness).
    assert grown < 620 * 2**20, f"the server's peak memory grew by {grown / 2**20:.0f} MiB refusing it"


def peak_rss(pid: int) -> int:
    """The most memory a process has held at once so far (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16", "utf-32"])
def test_json_that_is_not_utf8_is_a_400_whatever_it_nests(server, encoding):
    body = ('{"instances": ["\u2200", ' + "[" * 1000 + "]" * 1000 + ', "x"]}').encode(encoding)
    response = requests.post(f"{server.rest_url}/v1/models/mnist:predict", data=body, timeout=TIMEOUT)
    assert response.status_code == 400, response.text
    assert "JSON Parse error" in response.json()["error"]


@pytest.mark.parametrize(
    "version",
    [str(2**63 - 1) + "0", "9" * 4301, "1" * 5000],
    ids=["over_int64", "4301_digits", "5000_digits"],
)
def test_a_version_that_is_no_int64_is_a_400(server, version):
    largest = requests.get(f"{server.rest_url}/v1/models/mnist/versions/{2**63 - 1}", timeout=TIMEOUT)
    assert largest.status_code == 404, largest.text  # a version, just not one that is loaded
    for path in (f"/v1/models/mnist/versions/{version}", f"/v1/models/mnist/versions/{version}/metadata"):
        response = requests.get(server.rest_url + path, timeout=TIMEOUT)
        assert response.status_code == 400, (path, response.text)
        assert response.json()["error"] == f"Failed to convert version: {version} to numeric."


def raw_exchange(server, request_bytes: bytes) -> bytes:
    with rest_connection(server) as sock:
        sock.sendall(request_bytes)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize(
    ("line", "status"),
    [
        (b"GET http://[/v1/models/mnist HTTP/1.1", b"400"),
        (b"GET x://a]/v1/models/mnist HTTP/1.1", b"400"),
        (b"GET /v1/models/mnist HTTP/1.1 extra", b"400"),
        (b"GET /v1/models/mnist HTTP/1.1x", b"400"),
        (b"PRI * HTTP/2.0", b"505"),  # HTTP/2's preface: HTTP Version Not Supported
    ],
)
def test_a_malformed_request_line_gets_its_status_line_and_a_json_error(server, line, status):
    answer = raw_exchange(server, line + b"\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 " + status + b" "), answer[:200]
    assert b'{"error":' in answer
