"""The gRPC front end: tensorflow.serving.PredictionService (Predict, GetModelMetadata) and
ModelService (GetModelStatus, HandleReloadConfigRequest), on the official generated stubs, plus the standard
grpc.health.v1.Health (serving/local_server/health.py).
Classify, Regress and MultiInference answer UNIMPLEMENTED (the generated base class does that)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from typing import TypeVar

import grpc
from grpc_health.v1 import health_pb2_grpc
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving.local_server import tensors
from serving.local_server.core import ModelRef, ServingCore
from serving.local_server.errors import ServingError, invalid_argument
from serving.local_server.health import ModelHealth
from serving.local_server.metrics import ServerMetrics

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def _call(
    context: grpc.ServicerContext, metrics: ServerMetrics, api: str, model: str, handler: Callable[[], T]
) -> T:
    started = time.perf_counter()
    code = "OK"
    try:
        return handler()
    except ServingError as exc:
        code = exc.code_name
        log.info("request failed", extra={"api": api, "model": model, "code": code, "error": exc.message})
        context.abort(exc.code, exc.message)
    except Exception as exc:  # answer INTERNAL with a message, never a dropped stream
        code = "INTERNAL"
        log.exception("request crashed", extra={"api": api, "model": model})
        context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
    finally:
        metrics.request_count.labels(model, api, "GRPC", code).inc()
        metrics.request_latency.labels(model, api, "GRPC").observe(time.perf_counter() - started)
    raise AssertionError("unreachable")  # context.abort raises


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, core: ServingCore, metrics: ServerMetrics) -> None:
        self._core = core
        self._metrics = metrics

    def Predict(
        self, request: predict_pb2.PredictRequest, context: grpc.ServicerContext
    ) -> predict_pb2.PredictResponse:
        def handle() -> predict_pb2.PredictResponse:
            if not request.HasField("model_spec"):
                raise invalid_argument("Missing ModelSpec")
            ref = ModelRef.from_spec(request.model_spec)
            servable, signature = self._core.signature(ref)
            inputs = self._core.decode_inputs(signature, request.inputs)
            result = self._core.predict(ref, inputs, list(request.output_filter), servable=servable)
            response = predict_pb2.PredictResponse(model_spec=result.model_spec())
            for alias, array in result.outputs.items():
                response.outputs[alias].CopyFrom(tensors.to_proto(array))
            return response

        model = self._core.metric_label(request.model_spec.name)
        return _call(context, self._metrics, "Predict", model, handle)

    def GetModelMetadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest, context: grpc.ServicerContext
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        def handle() -> get_model_metadata_pb2.GetModelMetadataResponse:
            if not request.HasField("model_spec"):
                raise invalid_argument("Missing ModelSpec")
            return self._core.metadata(ModelRef.from_spec(request.model_spec), list(request.metadata_field))

        model = self._core.metric_label(request.model_spec.name)
        return _call(context, self._metrics, "GetModelMetadata", model, handle)


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, core: ServingCore, metrics: ServerMetrics) -> None:
        self._core = core
        self._metrics = metrics

    def GetModelStatus(
        self, request: get_model_status_pb2.GetModelStatusRequest, context: grpc.ServicerContext
    ) -> get_model_status_pb2.GetModelStatusResponse:
        def handle() -> get_model_status_pb2.GetModelStatusResponse:
            if not request.HasField("model_spec"):
                raise invalid_argument("Missing ModelSpec")
            return self._core.status(ModelRef.from_spec(request.model_spec))

        model = self._core.metric_label(request.model_spec.name)
        return _call(context, self._metrics, "GetModelStatus", model, handle)

    def HandleReloadConfigRequest(
        self, request: model_management_pb2.ReloadConfigRequest, context: grpc.ServicerContext
    ) -> model_management_pb2.ReloadConfigResponse:
        def handle() -> model_management_pb2.ReloadConfigResponse:
            self._core.manager.reload_config(request.config)
            return model_management_pb2.ReloadConfigResponse()  # status left at OK

        return _call(context, self._metrics, "HandleReloadConfigRequest", "", handle)


def create_grpc_server(
    core: ServingCore,
    metrics: ServerMetrics,
    *,
    address: str,
    port: int,
    max_threads: int,
    health: ModelHealth | None = None,
    channel_arguments: Sequence[tuple[str, int | str]] = (),
) -> tuple[grpc.Server, int]:
    """A started server and the port it bound (``port`` 0 picks one); `channel_arguments` (the operator's
    --grpc_channel_arguments) override the defaults."""
    options = {
        "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
        "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
        "grpc.so_reuseport": 0,
        **dict(channel_arguments),
    }
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="grpc"),
        options=list(options.items()),
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(core, metrics), server
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(core, metrics), server)
    if health is not None:  # Watch is non-blocking: a watching client holds no server thread
        health_pb2_grpc.add_HealthServicer_to_server(health.servicer, server)
    try:
        bound = server.add_insecure_port(f"{address}:{port}")
    except RuntimeError as exc:
        raise OSError(f"cannot bind gRPC port {address}:{port}: {exc}") from None
    if bound == 0:
        raise OSError(f"cannot bind gRPC port {address}:{port}")
    server.start()
    return server, bound
