"""ModelClient against a real gRPC server on a socket.

The server here is built from the *official* `tensorflow_serving.apis` service classes, so every call also
proves that our stubs hit the official method paths; each test scripts how it answers (errors, delays,
outages).
The live tests against `mnist-serve` with a real model are in tests/test_model_client_live.py.
"""

from __future__ import annotations

import multiprocessing
import threading
from concurrent import futures

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from deploy.local.readiness import free_port
from gateway.errors import InvalidInput, ModelError, ModelUnavailable, ModelVersionNotFound
from gateway.model_client import ModelClient, Prediction, VersionStatus
from tests.waiting import eventually

LABELS = {"stable": 1, "canary": 2}


def fake_model(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic 'model': the digit is the image's mean brightness mod 10."""
    digits = (images.reshape(len(images), -1).mean(axis=1).astype(np.int64)) % 10
    probabilities = np.full((len(images), 10), 0.01, dtype=np.float32)
    probabilities[np.arange(len(images)), digits] = 0.91
    return probabilities, digits


class ScriptedServer(
    prediction_service_pb2_grpc.PredictionServiceServicer, model_service_pb2_grpc.ModelServiceServicer
):
    """TF Serving's Predict and GetModelStatus on 127.0.0.1:<port>; `script` may replace an answer."""

    def __init__(self) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.requests: list = []
        self.script = None  # callable(request, context) -> response | None (None: the normal answer)
        self.server = None

    def start(self) -> None:
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(self, self.server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(self, self.server)
        self.server.add_insecure_port(self.address)
        self.server.start()

    def stop(self) -> None:
        self.server.stop(grace=None).wait()

    def Predict(self, request, context):
        self.requests.append(request)
        if self.script is not None:
            answer = self.script(request, context)
            if answer is not None:
                return answer
        spec = request.model_spec
        version = self._resolve(spec, context)
        images = tf.make_ndarray(request.inputs["image"])
        probabilities, digits = fake_model(images)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = spec.name
        response.model_spec.version.value = version
        response.model_spec.signature_name = spec.signature_name
        response.outputs["probabilities"].CopyFrom(tf.make_tensor_proto(probabilities))
        response.outputs["digit"].CopyFrom(tf.make_tensor_proto(digits))
        return response

    def GetModelStatus(self, request, context):
        self.requests.append(request)
        versions = (
            [self._resolve(request.model_spec, context)]
            if request.model_spec.WhichOneof("version_choice")
            else [1, 2, 3]
        )
        response = get_model_status_pb2.GetModelStatusResponse()
        for version in versions:
            state = "AVAILABLE" if version < 3 else "LOADING"
            response.model_version_status.add(
                version=version, state=get_model_status_pb2.ModelVersionStatus.State.Value(state)
            )
        return response

    @staticmethod
    def _resolve(spec, context) -> int:
        if spec.name != "mnist":
            context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({spec.name})")
        choice = spec.WhichOneof("version_choice")
        if choice == "version_label":
            if spec.version_label not in LABELS:
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"Unrecognized servable version label: {spec.version_label}",
                )
            return LABELS[spec.version_label]
        if choice == "version":
            if spec.version.value not in (1, 2, 3):
                context.abort(
                    grpc.StatusCode.NOT_FOUND, f"Servable not found: Specific(mnist, {spec.version.value})"
                )
            return spec.version.value
        return 3


@pytest.fixture
def server():
    srv = ScriptedServer()
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)


def test_predict_sends_the_official_request_and_decodes_the_answer(server, images):
    with ModelClient(server.address) as client:
        prediction = client.predict(images, label="stable")

    assert isinstance(prediction, Prediction)
    expected_probabilities, expected_digits = fake_model(images)
    np.testing.assert_array_equal(prediction.probabilities, expected_probabilities)
    np.testing.assert_array_equal(prediction.digits, expected_digits)
    assert prediction.probabilities.dtype == np.float32 and prediction.digits.dtype == np.int64
    assert (prediction.model_name, prediction.model_version) == ("mnist", 1)
    (request,) = server.requests
    assert request.model_spec.name == "mnist"
    assert request.model_spec.signature_name == "serving_default"
    assert request.model_spec.version_label == "stable"
    assert request.inputs["image"].tensor_content  # raw bytes, not one varint per pixel
    np.testing.assert_array_equal(tf.make_ndarray(request.inputs["image"]), images)


def test_version_and_latest_are_reported_from_the_response(server, images):
    with ModelClient(server.address) as client:
        assert client.predict(images, version=2).model_version == 2
        assert client.predict(images).model_version == 3
        assert client.predict(images[:1], label="canary").model_version == 2
    assert server.requests[0].model_spec.version.value == 2
    assert server.requests[1].model_spec.WhichOneof("version_choice") is None


def test_one_channel_is_reused_across_calls_and_threads(server, images):
    client = ModelClient(server.address)
    client.predict(images)
    channel = client._channel
    errors = []

    def work():
        try:
            for _ in range(5):
                client.predict(images)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert client._channel is channel
    assert len(server.requests) == 21
    client.close()


def test_model_status_lists_versions_and_states(server):
    with ModelClient(server.address) as client:
        assert client.model_status() == [
            VersionStatus(1, "AVAILABLE"),
            VersionStatus(2, "AVAILABLE"),
            VersionStatus(3, "LOADING"),
        ]
        assert client.model_status(label="canary") == [(2, "AVAILABLE")]
        with pytest.raises(ModelVersionNotFound, match="label 'nightly'"):
            client.model_status(label="nightly")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"label": "nightly"}, "model 'mnist' with label 'nightly' is not served"),
        ({"version": 9}, "model 'mnist' version 9 is not served"),
    ],
)
def test_a_label_or_version_the_server_lacks_is_not_found(server, images, kwargs, message):
    """The caller named it, so it is theirs to change: a 404 without Retry-After, by class, not text."""
    with ModelClient(server.address) as client, pytest.raises(ModelVersionNotFound) as info:
        client.predict(images, **kwargs)
    assert message in info.value.message
    assert info.value.status == 404 and info.value.code == "model_version_not_found"
    assert info.value.retry_after is None


def test_a_model_the_server_does_not_have_is_unavailable(server, images):
    """No label or version named: the server is up but the model is not loaded, an outage (503)."""
    with ModelClient(server.address, model_name="fashion") as client, pytest.raises(ModelUnavailable) as info:
        client.predict(images)
    assert not isinstance(info.value, ModelVersionNotFound)
    assert "model 'fashion' is not available" in info.value.message
    assert info.value.status == 503


@pytest.mark.parametrize(
    "code, error, status",
    [
        (grpc.StatusCode.INVALID_ARGUMENT, ModelError, 502),
        (grpc.StatusCode.INTERNAL, ModelError, 502),
        (grpc.StatusCode.FAILED_PRECONDITION, ModelError, 502),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, ModelUnavailable, 503),
        (grpc.StatusCode.UNAVAILABLE, ModelUnavailable, 503),
    ],
)
def test_grpc_codes_become_gateway_errors(server, images, code, error, status):
    def fail(request, context):
        context.abort(code, "/srv/models/mnist/3/saved_model.pb: secret internals")

    server.script = fail
    with ModelClient(server.address, retries=0) as client, pytest.raises(error) as info:
        client.predict(images)
    assert info.value.status == status
    assert "secret" not in info.value.message and "/srv" not in info.value.message


def test_unavailable_is_retried_then_succeeds(server, images):
    failures = iter(range(2))

    def flaky(request, context):
        if next(failures, None) is not None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")

    server.script = flaky
    with ModelClient(server.address, retries=3, backoff_s=0.01) as client:
        assert client.predict(images).digits.shape == (5,)
    assert len(server.requests) == 3


@pytest.mark.parametrize("code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.DEADLINE_EXCEEDED])
def test_only_unavailable_is_retried(server, images, code):
    def fail(request, context):
        context.abort(code, "no")

    server.script = fail
    client = ModelClient(server.address, retries=3, backoff_s=0.01)
    with client, pytest.raises((ModelError, ModelUnavailable)):
        client.predict(images)
    assert len(server.requests) == 1


def test_the_deadline_is_honoured(server, images):
    answered = threading.Event()

    def slow(request, context):
        answered.wait(120)  # answers only once the client gave up (or never, if it waits for us)

    server.script = slow
    with ModelClient(server.address, timeout_s=0.3) as client:
        try:
            with pytest.raises(ModelUnavailable, match="did not answer in time"):
                client.predict(images)
        finally:
            answered.set()


def test_retries_stay_inside_the_deadline(server, images):
    def down(request, context):
        context.abort(grpc.StatusCode.UNAVAILABLE, "down")

    server.script = down
    client = ModelClient(server.address, timeout_s=1.0, retries=500, backoff_s=0.05, max_backoff_s=0.2)
    with client, pytest.raises(ModelUnavailable):
        client.predict(images)
    # Hundreds of retries would take tens of seconds of backoff: the deadline ended them long before.
    assert 1 <= len(server.requests) < 500


def test_down_server_fails_fast_and_recovers_when_it_returns(images):
    server = ScriptedServer()
    client = ModelClient(server.address, timeout_s=1.0)
    with pytest.raises(ModelUnavailable, match="unreachable"):
        client.predict(images)

    server.start()
    try:
        # the channel reconnects within its (short) reconnect backoff
        recovered = eventually(
            lambda: client.predict(images), what="recovery", interval_s=0.1, retry_on=(ModelUnavailable,)
        )
        assert recovered.model_version == 3
        server.stop()
        with pytest.raises(ModelUnavailable):
            client.predict(images)
        server.start()  # same port, as a restarted model server
        eventually(
            lambda: client.predict(images), what="recovery after a restart", retry_on=(ModelUnavailable,)
        )
    finally:
        client.close()
        server.stop()


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((2, 28, 28), dtype=np.float32), "uint8"),
        (np.zeros((28, 28), dtype=np.uint8), "shape"),
        (np.zeros((1, 28, 27), dtype=np.uint8), "shape"),
        (np.zeros((0, 28, 28), dtype=np.uint8), "shape"),
        ([[0] * 28] * 28, "uint8"),
    ],
)
def test_malformed_batches_are_refused_before_any_call(server, bad, message):
    with ModelClient(server.address) as client, pytest.raises(InvalidInput, match=message):
        client.predict(bad)
    assert server.requests == []


def test_label_and_version_together_are_refused(server, images):
    with ModelClient(server.address) as client:
        with pytest.raises(InvalidInput):
            client.predict(images, label="stable", version=1)
        with pytest.raises(InvalidInput):
            client.predict(images, version=0)
    assert server.requests == []


def test_a_batch_over_the_message_limit_is_refused(server):
    with ModelClient(server.address, max_message_bytes=4096) as client:
        client.predict(np.zeros((4, 28, 28), dtype=np.uint8))
        with pytest.raises(InvalidInput, match="size limit"):
            client.predict(np.zeros((8, 28, 28), dtype=np.uint8))


@pytest.mark.parametrize(
    "drift",
    ["no digit", "wrong shape", "string dtype", "NaN probability", "infinite probability", "digit 10"],
)
def test_an_answer_off_the_serving_contract_is_a_model_error(server, images, drift):
    """Such an answer would reach the client with an id the store cannot record (a prediction answered and
    lost), and NaN is not JSON."""

    def answer(request, context):
        response = predict_pb2.PredictResponse()
        response.model_spec.name = "mnist"
        n = len(tf.make_ndarray(request.inputs["image"]))
        probabilities = np.zeros((n, 10), np.float32)
        if drift == "wrong shape":
            probabilities = np.zeros((n, 9), np.float32)
        elif drift == "NaN probability":
            probabilities[-1, 4] = np.nan
        elif drift == "infinite probability":
            probabilities[0, 0] = np.inf
        response.outputs["probabilities"].CopyFrom(tf.make_tensor_proto(probabilities))
        if drift == "string dtype":
            response.outputs["digit"].CopyFrom(tf.make_tensor_proto([b"1"] * n))
        elif drift == "digit 10":
            response.outputs["digit"].CopyFrom(tf.make_tensor_proto(np.full(n, 10, np.int64)))
        elif drift != "no digit":
            response.outputs["digit"].CopyFrom(tf.make_tensor_proto(np.zeros(n, np.int64)))
        return response

    server.script = answer
    with ModelClient(server.address) as client, pytest.raises(ModelError, match="serving contract"):
        client.predict(images)


def _predict_in_child(client: ModelClient, images: np.ndarray, queue) -> None:
    try:
        queue.put(("ok", client.predict(images).model_version, client._pid))
    except Exception as exc:  # reported to the parent
        queue.put(("error", repr(exc), None))


def test_a_forked_child_makes_its_own_channel(server, images):
    client = ModelClient(server.address)
    client.predict(images)  # the parent's channel exists before the fork, as in an app loaded pre-fork
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_predict_in_child, args=(client, images, queue))
    child.start()
    outcome = queue.get(timeout=30)
    child.join(timeout=30)
    assert outcome[0] == "ok", outcome
    assert outcome[1] == 3 and outcome[2] == child.pid
    assert client.predict(images).model_version == 3  # the parent's channel still works
    client.close()


# --- several replicas: gRPC's round_robin with health checking --------------------------------------


@pytest.fixture
def two_servers():
    servers = [ScriptedServer(), ScriptedServer()]
    for srv in servers:
        srv.start()
    yield servers
    for srv in servers:
        srv.stop()


def replicas_target(servers) -> str:
    return "ipv4:" + ",".join(srv.address for srv in servers)


def test_calls_are_spread_over_replicas_without_a_health_service(two_servers, images):
    """TF Serving has no grpc.health.v1 service: a replica without it counts as healthy while connected."""
    with ModelClient(replicas_target(two_servers), health_label="stable") as client:
        eventually(
            lambda: client.predict(images, label="stable") and all(len(s.requests) >= 5 for s in two_servers),
            what="both replicas to answer",
            retry_on=(),
        )


def test_unavailable_is_retried_on_another_replica(two_servers, images):
    down, up = two_servers

    def unavailable(request, context):
        context.abort(grpc.StatusCode.UNAVAILABLE, "shutting down")

    with ModelClient(replicas_target(two_servers), retries=1, backoff_s=0.001) as client:
        # round_robin picks among connected replicas only: until both are, a retry may meet the same one.
        eventually(
            lambda: client.predict(images) and down.requests and up.requests,
            what="both replicas to be connected",
        )
        down.script = unavailable
        tried = len(down.requests)
        # Round robin: the one retry goes to the other replica, so no call fails (retry_on=(): none may).
        eventually(
            lambda: client.predict(images) and len(down.requests) >= tried + 5,
            what="the failing replica to be tried",
            retry_on=(),
        )


def test_a_replica_reporting_not_serving_gets_no_calls(two_servers, images):
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    sick, well = two_servers
    sick.stop()  # again, now with a health service saying NOT_SERVING for what the client watches
    status = health.HealthServicer()
    status.set("mnist:stable", health_pb2.HealthCheckResponse.NOT_SERVING)
    sick.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(sick, sick.server)
    health_pb2_grpc.add_HealthServicer_to_server(status, sick.server)
    sick.server.add_insecure_port(sick.address)
    sick.server.start()

    with ModelClient(replicas_target(two_servers), health_label="stable") as client:
        for _ in range(20):
            client.predict(images, label="stable")
        assert (len(sick.requests), len(well.requests)) == (0, 20)
        status.set("mnist:stable", health_pb2.HealthCheckResponse.SERVING)
        eventually(
            lambda: client.predict(images, label="stable") and len(sick.requests) >= 3,
            what="the replica to get calls once SERVING",
        )


def test_a_dns_name_is_resolved_to_its_replicas(server, images):
    """`dns:///name:port` (a headless Service's form): the addresses of the name get the calls."""
    with ModelClient(f"dns:///localhost:{server.port}", health_label="stable") as client:
        assert client.predict(images, label="stable").model_version == 1
    assert len(server.requests) == 1
