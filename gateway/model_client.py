"""The gateway's one gRPC client of the model server (TF Serving or `mnist-serve`).

Speaks the TF Serving wire protocol through the project's own protos (gateway/tfs_protos: no tensorflow
import). One channel per client instance, created on first use and again in a forked child (the server forks
after the app is built, and a gRPC channel must not cross a fork). Every call carries a deadline; UNAVAILABLE
(server down or restarting) is retried with exponential backoff and full jitter, always inside that deadline.
Several model-server replicas (an `ipv4:` list or a `dns:///` name, gateway/settings.py) share the load
through gRPC's own `round_robin` policy over the replicas its health checks (grpc.health.v1) report SERVING
for `<model>:<label>`; a replica without the health service (TF Serving) counts as healthy while connected. A
retried UNAVAILABLE call is picked again, so it lands on another ready replica.
gRPC failures become the gateway's errors: the model server can't answer -> ModelUnavailable (503), it
does not serve the label or version the caller named -> ModelVersionNotFound (404), it does not serve the
model at all (no label or version named) -> ModelUnavailable (503), it rejected what we sent -> ModelError
(502), the caller's batch is malformed -> InvalidInput (400).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import threading
import time
from dataclasses import dataclass
from typing import NamedTuple

import grpc
import numpy as np

from gateway.errors import InvalidInput, ModelError, ModelUnavailable, ModelVersionNotFound
from gateway.tfs_protos import (
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    tensor_pb2,
    tensor_shape_pb2,
    types_pb2,
)

log = logging.getLogger(__name__)

# The model contract (training/contract.py). The gateway must not import training (no tensorflow in its
# image), so these are copies; tests/test_one_rule.py pins them to the original.
MODEL_NAME = "mnist"
SIGNATURE_NAME = "serving_default"
INPUT_KEY = "image"
PROBABILITIES_KEY = "probabilities"
DIGIT_KEY = "digit"
IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10

# Keepalive pings while a call is open (the health watch always is), so a replica that vanished without
# closing its connections is found within a minute. gRPC servers take pings more often than every 5 minutes
# as abuse unless told otherwise: every model server the project runs is (serving/README.md's command).
KEEPALIVE_S = 60.0

# What a DataType decodes to, and which repeated field holds it when tensor_content is empty.
_NUMPY_DTYPES: dict[int, tuple[np.dtype, str]] = {
    types_pb2.DT_FLOAT: (np.dtype("<f4"), "float_val"),
    types_pb2.DT_DOUBLE: (np.dtype("<f8"), "double_val"),
    types_pb2.DT_INT32: (np.dtype("<i4"), "int_val"),
    types_pb2.DT_UINT8: (np.dtype("u1"), "int_val"),
    types_pb2.DT_INT8: (np.dtype("i1"), "int_val"),
    types_pb2.DT_INT16: (np.dtype("<i2"), "int_val"),
    types_pb2.DT_UINT16: (np.dtype("<u2"), "int_val"),
    types_pb2.DT_INT64: (np.dtype("<i8"), "int64_val"),
    types_pb2.DT_UINT32: (np.dtype("<u4"), "uint32_val"),
    types_pb2.DT_UINT64: (np.dtype("<u8"), "uint64_val"),
    types_pb2.DT_BOOL: (np.dtype("?"), "bool_val"),
}

# Codes meaning "the model server can't answer now": the caller may retry later (503 + Retry-After).
_UNAVAILABLE_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
)


def health_service(model_name: str, label: str | None) -> str:
    """The grpc.health.v1 service name that is SERVING when `label` of the model answers (mnist-serve's
    rule, serving/local_server/health.py; tests/test_serve_health.py pins the copy); no label: any version."""
    return f"{model_name}:{label}" if label else model_name


def service_config(health_service_name: str) -> str:
    """The channel's service config: round_robin over the resolved addresses, each health-checked."""
    return json.dumps(
        {
            "loadBalancingConfig": [{"round_robin": {}}],
            "healthCheckConfig": {"serviceName": health_service_name},
        }
    )


def _named(label: str | None, version: int | None) -> bool:
    return label is not None or version is not None


@dataclass(frozen=True)
class Prediction:
    probabilities: np.ndarray  # float32 [N, 10]
    digits: np.ndarray  # int64 [N]
    model_name: str
    model_version: int | None  # the version that answered (from the response's model_spec)


class VersionStatus(NamedTuple):
    version: int
    state: str  # UNKNOWN, START, LOADING, AVAILABLE, UNLOADING, END


def images_to_tensor(images: np.ndarray) -> tensor_pb2.TensorProto:
    """A uint8 [N, 28, 28] batch as a DT_UINT8 TensorProto (raw bytes in tensor_content, no varints)."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        raise InvalidInput("the model input must be a uint8 array")
    if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE or images.shape[0] < 1:
        raise InvalidInput(f"the model input must have shape [N, 28, 28], not {list(images.shape)}")
    content = np.ascontiguousarray(images).tobytes()
    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_UINT8, tensor_content=content)
    tensor.tensor_shape.dim.extend(tensor_shape_pb2.TensorShapeProto.Dim(size=s) for s in images.shape)
    return tensor


def tensor_to_array(tensor: tensor_pb2.TensorProto) -> np.ndarray:
    """Decode a numeric TensorProto from tensor_content or its repeated field, as tf.make_ndarray does."""
    # Plain Python on the shape and values (math.prod, list()): numpy's calls cost more than the few values
    # of an answer; this runs twice per Predict call.
    if tensor.tensor_shape.unknown_rank:
        raise ValueError("tensor of unknown rank")
    shape = tuple([d.size for d in tensor.tensor_shape.dim])
    found = _NUMPY_DTYPES.get(tensor.dtype)
    if found is None:
        raise ValueError(f"unsupported tensor dtype {types_pb2.DataType.Name(tensor.dtype)}")
    dtype, field = found
    count = math.prod(shape)
    content = tensor.tensor_content
    if content:
        if len(content) != count * dtype.itemsize:
            raise ValueError(f"tensor_content holds {len(content)} bytes for shape {list(shape)}")
        # Copy into native byte order: the result must not alias the message's buffer.
        return np.frombuffer(content, dtype=dtype).astype(dtype.newbyteorder("=")).reshape(shape)
    values = list(getattr(tensor, field))
    if len(values) == count:
        return np.array(values, dtype=dtype).reshape(shape)
    if not values or len(values) > count:
        raise ValueError(f"tensor holds {len(values)} values for shape {list(shape)}")
    # TF's compact form: fewer values than elements means "repeat the last one".
    filler = np.full(count - len(values), values[-1], dtype=dtype)
    return np.concatenate([np.array(values, dtype=dtype), filler]).reshape(shape)


class ModelClient:
    """Predict and GetModelStatus against the model server (one or several replicas). Thread-safe; share one
    instance per process."""

    def __init__(
        self,
        target: str,
        *,
        timeout_s: float = 3.0,
        model_name: str = MODEL_NAME,
        signature_name: str = SIGNATURE_NAME,
        retries: int = 3,
        backoff_s: float = 0.05,
        max_backoff_s: float = 1.0,
        max_message_bytes: int = 4 * 1024 * 1024,
        keepalive_s: float = KEEPALIVE_S,
        health_label: str | None = None,
    ) -> None:
        if timeout_s <= 0 or retries < 0 or max_message_bytes < 1024:
            raise ValueError("timeout_s must be > 0, retries >= 0 and max_message_bytes >= 1024")
        self.target = target
        self.timeout_s = timeout_s
        self.model_name = model_name
        self.signature_name = signature_name
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_message_bytes = max_message_bytes
        self.options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            # Pings only while calls are in flight (the health watch is one); see KEEPALIVE_S.
            ("grpc.keepalive_time_ms", int(keepalive_s * 1000)),
            ("grpc.keepalive_timeout_ms", 20_000),
            ("grpc.keepalive_permit_without_calls", 0),
            # Reconnect quickly once a restarted server is back (gRPC's default backoff grows to 120 s).
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1_000),
            ("grpc.enable_retries", 0),  # retries are ours, bounded by the call's deadline
            ("grpc.service_config", service_config(health_service(model_name, health_label))),
            # Our config, not one a DNS TXT record might carry.
            ("grpc.service_config_disable_resolution", 1),
        ]
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None
        self._pid: int | None = None
        self._predict_rpc = None
        self._status_rpc = None
        self._random = random.Random()

    # --- public API ---

    def predict(
        self,
        images: np.ndarray,
        *,
        label: str | None = None,
        version: int | None = None,
        timeout_s: float | None = None,
    ) -> Prediction:
        """Classify a uint8 [N, 28, 28] batch; `label` or `version` picks the version (default: latest)."""
        request = predict_pb2.PredictRequest(model_spec=self._model_spec(label, version))
        request.inputs[INPUT_KEY].CopyFrom(images_to_tensor(images))
        if request.ByteSize() > self.max_message_bytes:
            raise InvalidInput(f"a batch of {images.shape[0]} images is over the model request size limit")
        predict_rpc, _ = self._rpcs()
        response = self._call(
            predict_rpc, request, timeout_s, what=self._describe(label, version), named=_named(label, version)
        )
        return self._decode_prediction(response, batch=images.shape[0])

    def model_status(self, *, label: str | None = None, version: int | None = None) -> list[VersionStatus]:
        """The versions the server knows for this model (or for the label/version), with their state."""
        request = get_model_status_pb2.GetModelStatusRequest(model_spec=self._model_spec(label, version))
        request.model_spec.ClearField("signature_name")
        _, status_rpc = self._rpcs()
        response = self._call(
            status_rpc, request, None, what=self._describe(label, version), named=_named(label, version)
        )
        state_name = get_model_status_pb2.ModelVersionStatus.State.Name
        return [VersionStatus(s.version, state_name(s.state)) for s in response.model_version_status]

    def close(self) -> None:
        with self._lock:
            if self._channel is not None and self._pid == os.getpid():
                self._channel.close()
            self._channel = self._predict_rpc = self._status_rpc = None
            self._pid = None

    def __enter__(self) -> ModelClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals ---

    def _rpcs(self):
        """The channel's callables, creating the channel on first use and again after a fork."""
        pid = os.getpid()
        with self._lock:
            if self._channel is None or self._pid != pid:
                # An inherited channel belongs to the parent: drop it without closing it from here.
                self._channel = grpc.insecure_channel(self.target, options=self.options)
                self._pid = pid
                self._predict_rpc = prediction_service_pb2_grpc.PredictionServiceStub(self._channel).Predict
                self._status_rpc = model_service_pb2_grpc.ModelServiceStub(self._channel).GetModelStatus
            return self._predict_rpc, self._status_rpc

    def _model_spec(self, label: str | None, version: int | None) -> model_pb2.ModelSpec:
        if label is not None and version is not None:
            raise InvalidInput("choose the model by label or by version, not both")
        spec = model_pb2.ModelSpec(name=self.model_name, signature_name=self.signature_name)
        if label is not None:
            if not label:
                raise InvalidInput("the model label must not be empty")
            spec.version_label = label
        elif version is not None:
            if isinstance(version, bool) or not isinstance(version, int) or version < 1:
                raise InvalidInput("the model version must be a positive integer")
            spec.version.value = version
        return spec

    def _describe(self, label: str | None, version: int | None) -> str:
        if label is not None:
            return f"model {self.model_name!r} with label {label!r}"
        if version is not None:
            return f"model {self.model_name!r} version {version}"
        return f"model {self.model_name!r}"

    def _call(self, rpc, request, timeout_s: float | None, *, what: str, named: bool):
        """One unary call under one overall deadline, retrying UNAVAILABLE with backoff inside it."""
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            try:
                return rpc(request, timeout=max(remaining, 0.001))
            except grpc.RpcError as exc:
                code = exc.code()
                if code == grpc.StatusCode.UNAVAILABLE and attempt < self.retries:
                    pause = self._random.uniform(0, min(self.max_backoff_s, self.backoff_s * 2**attempt))
                    # Only retry when a pause and a short attempt still fit before the deadline.
                    if deadline - time.monotonic() > pause + 0.01:
                        attempt += 1
                        time.sleep(pause)
                        continue
                raise self._error(exc, what, named=named, attempts=attempt + 1) from None

    def _error(self, exc: grpc.RpcError, what: str, *, named: bool, attempts: int) -> Exception:
        code, details = exc.code(), exc.details() or ""
        log.warning(
            "model server call failed",
            extra={
                "grpc_code": code.name,
                "grpc_details": details,
                "target": self.target,
                "attempts": attempts,
            },
        )
        if code in _UNAVAILABLE_CODES:
            reason = {
                grpc.StatusCode.UNAVAILABLE: "is unreachable",
                grpc.StatusCode.DEADLINE_EXCEEDED: "did not answer in time",
                grpc.StatusCode.RESOURCE_EXHAUSTED: "is overloaded",
            }[code]
            return ModelUnavailable(f"the model server {reason}; try again shortly")
        # TF Serving answers NOT_FOUND for an unknown model/version, INVALID_ARGUMENT for an unknown label.
        if code == grpc.StatusCode.NOT_FOUND or (
            code == grpc.StatusCode.INVALID_ARGUMENT and "version label" in details.lower()
        ):
            if named:  # the caller named a label or version: theirs to change (the route knows its default)
                return ModelVersionNotFound(f"{what} is not served by the model server")
            return ModelUnavailable(f"{what} is not available on the model server")
        return ModelError(f"the model server rejected the request ({code.name})")

    def _decode_prediction(self, response: predict_pb2.PredictResponse, *, batch: int) -> Prediction:
        try:
            missing = [key for key in (PROBABILITIES_KEY, DIGIT_KEY) if key not in response.outputs]
            if missing:
                raise ValueError(f"no output {missing[0]!r}")
            outputs = response.outputs
            probabilities = tensor_to_array(outputs[PROBABILITIES_KEY]).astype(np.float32, copy=False)
            digits = tensor_to_array(outputs[DIGIT_KEY]).astype(np.int64, copy=False)
        except ValueError as exc:
            raise ModelError(f"the model's answer does not match the serving contract: {exc}") from None
        if probabilities.shape != (batch, NUM_CLASSES) or digits.shape != (batch,):
            raise ModelError(
                "the model's answer does not match the serving contract: "
                f"probabilities {list(probabilities.shape)}, digit {list(digits.shape)} "
                f"for a batch of {batch}"
            )
        # What the store can record (gateway/store/records.py): an answer it cannot is never handed out.
        if not np.isfinite(probabilities).all() or not ((digits >= 0) & (digits < NUM_CLASSES)).all():
            raise ModelError(
                "the model's answer does not match the serving contract: "
                "probabilities that are not finite or a digit outside 0-9"
            )
        spec = response.model_spec
        return Prediction(
            probabilities=probabilities,
            digits=digits,
            model_name=spec.name or self.model_name,
            model_version=spec.version.value if spec.HasField("version") else None,
        )
