"""The REST front end: TF Serving's /v1 API (model status, metadata, predict in row and column formats)
and the Prometheus page, on the standard library's threading HTTP server.

Paths and error shapes follow TF Serving's http_rest_api_handler.cc / http_rest_api_util.cc: any /v1/ path
is handled, ``{"error": "..."}`` bodies, statuses from errors.HTTP_STATUS.
"""

from __future__ import annotations

import io
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

import grpc
import numpy as np
from google.protobuf import json_format

from serving.local_server import tensors
from serving.local_server.config import MonitoringOptions
from serving.local_server.connections import ConnectionTable
from serving.local_server.core import SIGNATURE_DEF_FIELD, ModelRef, Prediction, ServingCore
from serving.local_server.errors import ServingError, invalid_argument
from serving.local_server.metrics import ServerMetrics
from serving.local_server.servable import Signature

log = logging.getLogger(__name__)

_PREDICT_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)", re.I
)
_STATUS_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?", re.I
)

# A tensor needs one level per dimension plus the request object, "instances" and a named-input object; TF's
# tensors rarely exceed rank 8. Deeper bodies are refused before parsing.
MAX_JSON_DEPTH = 32
_JSON_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"', re.DOTALL)  # possessive: linear on any input
_DEPTH_STEP = np.zeros(256, dtype=np.int8)  # byte -> change of nesting depth
_DEPTH_STEP[list(b"[{")] = 1
_DEPTH_STEP[list(b"]}")] = -1
_DEPTH_CHUNK = 1 << 20


class RestApi:
    """Request routing and JSON handling, independent of the HTTP server (``handle`` is the whole API)."""

    def __init__(self, core: ServingCore, metrics: ServerMetrics, monitoring: MonitoringOptions) -> None:
        self.core = core
        self.metrics = metrics
        self.monitoring = monitoring

    def handle(self, method: str, raw_path: str, body: bytes) -> tuple[int, str, bytes]:
        """Returns (HTTP status, content type, body)."""
        try:
            path = urlsplit(raw_path).path
        except ValueError:  # an absolute URI that does not parse (`http://[/...`)
            return _json_error(HTTPStatus.BAD_REQUEST, f"Malformed request target: {raw_path[:200]}")
        if self.monitoring.prometheus_enabled and path == self.monitoring.prometheus_path:
            if method != "GET":
                return _json_error(HTTPStatus.METHOD_NOT_ALLOWED, f"{method} not allowed on {path}")
            return 200, self.metrics.content_type, self.metrics.render()
        if not path.lower().startswith("/v1/"):
            return _json_error(HTTPStatus.NOT_FOUND, f"Not found: {path}")
        started = time.perf_counter()
        api, model, code = "Unknown", "", "OK"
        try:
            api, ref, run = self._route(method, path, body)
            model = ref.name
            return 200, "application/json", run()
        except ServingError as exc:
            code = exc.code_name
            return _json_error(exc.http_status, exc.message)
        except Exception as exc:  # a bug answers 500 with a message, never a dropped connection
            code = "INTERNAL"
            log.exception("REST request crashed", extra={"path": path})
            return _json_error(500, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            label = self.core.metric_label(model)
            self.metrics.request_count.labels(label, api, "REST", code).inc()
            self.metrics.request_latency.labels(label, api, "REST").observe(time.perf_counter() - started)

    def _route(self, method: str, path: str, body: bytes) -> tuple[str, ModelRef, Callable[[], bytes]]:
        """(API name, model reference, the call producing the JSON body); errors for paths TF would refuse."""
        malformed = invalid_argument(f"Malformed request: {method} {path}")
        if method == "POST":
            match = _PREDICT_PATH.fullmatch(path)
            if not match:
                raise malformed
            ref = _ref(match.group(1), match.group(2), match.group(3))
            verb = match.group(4).lower()
            if verb != "predict":
                raise ServingError(grpc.StatusCode.UNIMPLEMENTED, f"{verb} is not supported by mnist-serve")
            return "Predict", ref, lambda: self._predict(ref, body)
        if method == "GET":
            match = _STATUS_PATH.fullmatch(path)
            if not match:
                raise malformed
            if not match.group(1):
                raise invalid_argument("Missing model name in request.")
            ref = _ref(match.group(1), match.group(2), match.group(3))
            if match.group(4):
                return "GetModelMetadata", ref, lambda: _metadata_json(self.core, ref)
            return "GetModelStatus", ref, lambda: _status_json(self.core, ref)
        raise malformed

    def _predict(self, ref: ModelRef, body: bytes) -> bytes:
        request = parse_json(body)
        if not isinstance(request, dict):
            raise invalid_argument("JSON Value: request body must be a JSON object")
        signature_name = request.get("signature_name", "")
        if not isinstance(signature_name, str):
            raise invalid_argument("'signature_name' must be a string")
        ref = ModelRef(ref.name, ref.version, ref.label, signature_name)
        has_rows, has_columns = "instances" in request, "inputs" in request
        if has_rows and has_columns:
            raise invalid_argument(
                "Not formatted correctly expecting only one of 'inputs' or 'instances' keys exists"
            )
        if not has_rows and not has_columns:
            raise invalid_argument("Missing 'inputs' or 'instances' key")
        servable, signature = self.core.signature(ref)
        if has_rows:
            inputs = _rows_to_inputs(request["instances"], signature)
        else:
            inputs = _columns_to_inputs(request["inputs"], signature)
        result = self.core.predict(ref, inputs, servable=servable)
        if has_rows:
            return _dumps({"predictions": _outputs_to_rows(result)})
        return _dumps({"outputs": _outputs_to_columns(result)})


def parse_json(body: bytes) -> Any:
    """The body as JSON: UTF-8 (as TF Serving reads it; the depth count reads bytes as ASCII text), nesting
    checked first (the parser recurses: 100,000 brackets would overflow it)."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise invalid_argument(
            f"JSON Parse error: the body is not UTF-8 ({exc.reason} at byte {exc.start})"
        ) from None
    depth = json_depth(body)
    if depth > MAX_JSON_DEPTH:
        raise invalid_argument(f"JSON Parse error: nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(text or "")
    except ValueError as exc:  # also integers of over 4300 digits
        raise invalid_argument(f"JSON Parse error: {exc}") from None


def json_depth(body: bytes) -> int:
    """How deeply ``[`` and ``{`` nest outside strings, in one pass of C loops (no Python loop per byte)."""
    structure = np.frombuffer(_JSON_STRING.sub(b'""', body), dtype=np.uint8)
    if not structure.size:
        return 0
    # One int8 step per byte (+1 opener, -1 closer), summed in int32 chunks: about 3.5 bytes per body byte at
    # the peak, 2 of them the copy without strings (int32 steps and an int64 running sum: 21; parsing: 5).
    steps = _DEPTH_STEP[structure]
    depth = deepest = 0
    for start in range(0, steps.size, _DEPTH_CHUNK):
        running = np.cumsum(steps[start : start + _DEPTH_CHUNK], dtype=np.int32)
        running += depth
        deepest = max(deepest, int(running.max()))
        depth = int(running[-1])
    return deepest


def _ref(name: str, version: str | None, label: str | None) -> ModelRef:
    return ModelRef(
        name=unquote(name),
        version=_version(version) if version else None,
        label=unquote(label) if label else None,
    )


def _version(text: str) -> int:
    """A path's version as TF Serving reads it (an int64 of ASCII digits), else its 400."""
    digits = text.lstrip("0") or "0"
    if not (text.isascii() and text.isdigit()) or len(digits) > 19 or int(digits) > 2**63 - 1:
        raise invalid_argument(f"Failed to convert version: {text} to numeric.")
    return int(digits)


def _rows_to_inputs(instances: Any, signature: Signature) -> dict[str, np.ndarray]:
    if not isinstance(instances, list) or not instances:
        raise invalid_argument("Expecting 'instances' to be a non-empty list")
    names = sorted(signature.inputs)
    named = all(isinstance(i, dict) for i in instances)
    if any(isinstance(i, dict) for i in instances) and not named:
        raise invalid_argument("Expecting all 'instances' to be objects with named inputs, or none of them")
    if not named:
        if len(names) != 1:
            raise invalid_argument(
                f"The signature has {len(names)} inputs ({', '.join(names)}): "
                "each instance must be an object naming them"
            )
        return {names[0]: tensors.from_json(instances, signature.inputs[names[0]].dtype, names[0])}
    for index, instance in enumerate(instances):
        if set(instance) != set(names):
            missing = sorted(set(names) - set(instance))
            extra = sorted(set(instance) - set(names))
            raise invalid_argument(
                f"Failed to process element: {index} of 'instances' list. Missing inputs: {missing}; "
                f"unknown inputs: {extra}; expected {names}"
            )
    return {
        name: tensors.from_json(
            [instance[name] for instance in instances], signature.inputs[name].dtype, name
        )
        for name in names
    }


def _columns_to_inputs(columns: Any, signature: Signature) -> dict[str, np.ndarray]:
    names = sorted(signature.inputs)
    if isinstance(columns, dict):
        unknown = sorted(set(columns) - set(names))
        if unknown:
            raise invalid_argument(
                f"input tensor alias not found in signature: {unknown[0]}. Inputs expected to be in the set "
                f"{{{','.join(names)}}}."
            )
        return {
            name: tensors.from_json(value, signature.inputs[name].dtype, name)
            for name, value in columns.items()
        }
    if len(names) != 1:
        raise invalid_argument(f"'inputs' must be an object naming the signature's inputs {names}")
    return {names[0]: tensors.from_json(columns, signature.inputs[names[0]].dtype, names[0])}


def _outputs_to_rows(result: Prediction) -> list[Any]:
    outputs = result.outputs
    if len(outputs) == 1:
        return tensors.to_json(next(iter(outputs.values())))
    sizes = {array.shape[0] if array.ndim else None for array in outputs.values()}
    if len(sizes) != 1 or None in sizes:
        raise invalid_argument(
            "Tensors in the output have different or no batch sizes; use the columnar ('inputs') format"
        )
    size = sizes.pop()
    as_json = {alias: tensors.to_json(array) for alias, array in outputs.items()}
    return [{alias: values[i] for alias, values in as_json.items()} for i in range(size)]


def _outputs_to_columns(result: Prediction) -> Any:
    if len(result.outputs) == 1:
        return tensors.to_json(next(iter(result.outputs.values())))
    return {alias: tensors.to_json(array) for alias, array in result.outputs.items()}


def _status_json(core: ServingCore, ref: ModelRef) -> bytes:
    options = {"preserving_proto_field_name": True, "always_print_fields_with_no_presence": True}
    return _dumps(json_format.MessageToDict(core.status(ref), **options))


def _metadata_json(core: ServingCore, ref: ModelRef) -> bytes:
    response = core.metadata(ref, [SIGNATURE_DEF_FIELD])
    from tensorflow_serving.apis import get_model_metadata_pb2

    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata[SIGNATURE_DEF_FIELD].Unpack(signature_map)
    options = {"preserving_proto_field_name": True, "always_print_fields_with_no_presence": True}
    return _dumps(
        {
            "model_spec": json_format.MessageToDict(response.model_spec, **options),
            "metadata": {SIGNATURE_DEF_FIELD: json_format.MessageToDict(signature_map, **options)},
        }
    )


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _json_error(status: int, message: str) -> tuple[int, str, bytes]:
    return int(status), "application/json", _dumps({"error": message})


class _DeadlineReader(io.RawIOBase):
    """Socket reads that fail once the handler's ``deadline`` has passed, however slowly the bytes trickle in
    (a per-read timeout alone lets a client hold a connection by sending a byte just before each timeout)."""

    def __init__(self, sock: socket.socket, handler: _Handler) -> None:
        self._sock = sock
        self._handler = handler

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        remaining = self._handler.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the request did not arrive in time")
        self._sock.settimeout(remaining)
        return self._sock.recv_into(buffer)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "mnist-serve"
    api: RestApi
    max_body_bytes: int
    request_timeout: float
    slots: threading.Semaphore
    connections: ConnectionTable
    deadline: float = 0.0
    expects_continue: bool = False

    def setup(self) -> None:
        super().setup()
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, self))

    def handle_one_request(self) -> None:
        # Each request (its line, headers and body) must arrive within the timeout of the previous answer.
        self.deadline = time.monotonic() + self.request_timeout
        self.expects_continue = False
        self.connections.waiting(self.connection)
        super().handle_one_request()

    def handle_expect_100(self) -> bool:
        # "100 Continue" waits for a processing slot (do_POST): a client that waits for it sends its body only
        # when it will be read, and one whose request is refused first never sends it.
        self.expects_continue = True
        return True

    def do_GET(self) -> None:
        with self.slots:
            answer = self._answer(b"")
        self._reply(*answer)

    def do_POST(self) -> None:
        length_header = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding") is not None or length_header is None:
            self._reply(*_json_error(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required"), close=True)
            return
        try:
            length = int(length_header)
        except ValueError:
            self._reply(*_json_error(HTTPStatus.BAD_REQUEST, "invalid Content-Length"), close=True)
            return
        if length < 0 or length > self.max_body_bytes:
            self._reply(
                *_json_error(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    f"request body of {length} bytes exceeds {self.max_body_bytes}",
                ),
                close=True,
            )
            return
        # The slot comes before the body, so at most num_threads bodies are in memory at once. The connection
        # still counts as waiting while its body arrives: it can be closed to make room, and the deadline
        # bounds how long it holds the slot.
        with self.slots:
            if self.expects_continue:
                self.send_response_only(HTTPStatus.CONTINUE)
                self.end_headers()
            body = self.rfile.read(length)
            if len(body) < length:  # the client hung up (or was hung up on) mid-body: nobody to answer
                self.close_connection = True
                return
            answer = self._answer(body)
        self._reply(*answer)  # outside the slot: a client slow to read its answer holds only its connection

    def _method_not_allowed(self) -> None:
        status, content_type, payload = _json_error(
            HTTPStatus.METHOD_NOT_ALLOWED, f"{self.command} is not supported: use GET or POST"
        )
        self._reply(status, content_type, b"" if self.command == "HEAD" else payload, close=True)

    # Methods HTTP defines but this API does not use: 405 (an unknown one is 501 from http.server).
    do_HEAD = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _method_not_allowed

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (bad request line, headers too long, unknown method) as JSON."""
        if self.request_version == "HTTP/0.9":  # the line did not parse: answer it as HTTP/1.1 all the same
            self.request_version = self.protocol_version
        self._reply(*_json_error(code, message or HTTPStatus(code).phrase), close=True)

    def _answer(self, body: bytes) -> tuple[int, str, bytes]:
        """The answer to a request that has fully arrived; the caller holds a slot."""
        self.connections.busy(self.connection)
        return self.api.handle(self.command, self.path, body)

    def _reply(self, status: int, content_type: str, payload: bytes, *, close: bool = False) -> None:
        self.connection.settimeout(self.request_timeout)  # a client that does not read cannot hold us
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        if status == HTTPStatus.METHOD_NOT_ALLOWED:
            self.send_header("Allow", "GET, POST")
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http " + format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    connections: ConnectionTable

    def process_request(self, request: socket.socket, client_address: Any) -> None:
        if not self.connections.admit(request):
            _refuse(request)
            return
        super().process_request(request, client_address)

    def shutdown_request(self, request: socket.socket) -> None:
        self.connections.closed(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up or times out is routine; anything else is a bug worth a traceback.
        log.debug("REST connection ended with an error", exc_info=True)


def _refuse(request: socket.socket) -> None:
    """Every connection is busy answering: a 503 without a thread (one small non-blocking write)."""
    status, _, payload = _json_error(HTTPStatus.SERVICE_UNAVAILABLE, "too many connections, retry later")
    head = (
        f"HTTP/1.1 {status} Service Unavailable\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    )
    try:
        request.setblocking(False)
        request.send(head.encode() + payload)
    except OSError:
        pass
    request.close()


class RestServer:
    """The REST API on a threading HTTP server; ``port`` 0 picks a free port (see ``.port``)."""

    def __init__(
        self,
        api: RestApi,
        *,
        address: str,
        port: int,
        num_threads: int,
        max_body_bytes: int,
        max_connections: int,
        request_timeout: float,
    ) -> None:
        connections = ConnectionTable(max_connections)
        handler = type(
            "Handler",
            (_Handler,),
            {
                "api": api,
                "max_body_bytes": max_body_bytes,
                "request_timeout": request_timeout,
                "slots": threading.Semaphore(num_threads),
                "connections": connections,
            },
        )
        self._server = _Server((address, port), handler)
        self._server.connections = connections
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="rest", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
