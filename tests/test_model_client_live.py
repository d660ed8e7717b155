"""ModelClient against the real model server (`mnist-serve` serving the quick model) over gRPC."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import predict_pb2 as official_predict
from tensorflow_serving.apis import prediction_service_pb2_grpc as official_grpc

from gateway.errors import ModelUnavailable, ModelVersionNotFound
from gateway.model_client import ModelClient
from tests.fixtures.model_server import ModelServerProcess, copy_models, models_config_text
from tests.waiting import eventually


@pytest.fixture(scope="module")
def digits(mnist_dir):
    from training.data import load_mnist

    data = load_mnist(mnist_dir)
    return data.test_images[:64], data.test_labels[:64]


@pytest.fixture(scope="module")
def client(model_server):
    with ModelClient(model_server.grpc_address, timeout_s=10.0) as c:
        yield c


def test_predict_by_label_matches_the_keras_model(client, digits, quick_keras_model):
    images, labels = digits
    prediction = client.predict(images, label="stable")
    assert (prediction.model_name, prediction.model_version) == ("mnist", 1)
    assert prediction.probabilities.shape == (64, 10) and prediction.digits.shape == (64,)
    np.testing.assert_allclose(prediction.probabilities.sum(axis=1), 1.0, atol=1e-4)
    np.testing.assert_array_equal(prediction.digits, prediction.probabilities.argmax(axis=1))
    expected = quick_keras_model.predict(images, verbose=0)
    np.testing.assert_allclose(prediction.probabilities, expected, atol=1e-4)
    assert (prediction.digits == labels).mean() > 0.85


def test_predict_by_version_and_latest(client, digits):
    images = digits[0][:3]
    assert client.predict(images, version=1).model_version == 1
    assert client.predict(images).model_version == 1
    assert client.predict(images[:1]).digits.shape == (1,)


def test_our_answer_equals_the_official_clients(client, model_server, digits):
    import tensorflow as tf

    images = digits[0][:8]
    request = official_predict.PredictRequest()
    request.model_spec.name = "mnist"
    request.model_spec.signature_name = "serving_default"
    request.inputs["image"].CopyFrom(tf.make_tensor_proto(images))
    with grpc.insecure_channel(model_server.grpc_address) as channel:
        response = official_grpc.PredictionServiceStub(channel).Predict(request, timeout=10)
    ours = client.predict(images)
    np.testing.assert_array_equal(ours.probabilities, tf.make_ndarray(response.outputs["probabilities"]))
    np.testing.assert_array_equal(ours.digits, tf.make_ndarray(response.outputs["digit"]))
    assert ours.model_version == response.model_spec.version.value


def test_model_status_for_readiness(client):
    assert client.model_status(label="stable") == [(1, "AVAILABLE")]
    assert (1, "AVAILABLE") in client.model_status()


@pytest.mark.parametrize("kwargs", [{"label": "no-such-label"}, {"version": 999}])
def test_a_version_the_server_lacks_is_not_found(client, digits, kwargs):
    with pytest.raises(ModelVersionNotFound, match="not served"):
        client.predict(digits[0][:1], **kwargs)


def test_an_unknown_model_is_unavailable(model_server, digits):
    with (
        ModelClient(model_server.grpc_address, model_name="fashion") as other,
        pytest.raises(ModelUnavailable),
    ):
        other.predict(digits[0][:1])


@pytest.mark.slow
def test_outage_fails_fast_then_recovers(model_base_path, tmp_path, digits):
    """A server of our own (stopping the shared one would disturb other tests)."""
    base = copy_models(model_base_path, tmp_path / "models")
    config = tmp_path / "models.config"
    config.write_text(models_config_text(base))
    server = ModelServerProcess(base, config, tmp_path / "mnist-serve.log").start()
    images = digits[0][:4]
    client = ModelClient(server.grpc_address, timeout_s=2.0)
    try:
        assert client.predict(images, label="stable").model_version == 1
        server.stop()

        started = time.monotonic()
        with pytest.raises(ModelUnavailable) as info:
            client.predict(images, label="stable")
        assert time.monotonic() - started < 3.0  # within the deadline (2 s) and some slack
        assert info.value.status == 503

        server.start()  # same ports
        deadline = time.monotonic() + 30
        while True:
            try:
                assert client.predict(images, label="stable").model_version == 1
                break
            except ModelUnavailable:
                assert time.monotonic() < deadline, "the client did not recover after the server returned"
                time.sleep(0.2)
    finally:
        client.close()
        server.stop()


def test_grpc_channel_arguments_reach_the_grpc_server(model_base_path, tmp_path):
    """`--grpc_channel_arguments` (TF Serving's flag) configures mnist-serve's gRPC server: with a maximum
    connection age, the server ends even an idle client's connection (GOAWAY), which no default does."""
    base = copy_models(model_base_path, tmp_path / "models")
    config = tmp_path / "models.config"
    config.write_text(models_config_text(base))
    ages = ["--grpc_channel_arguments=grpc.max_connection_age_ms=300,grpc.max_connection_age_grace_ms=1000"]
    server = ModelServerProcess(base, config, tmp_path / "mnist-serve.log", extra_args=ages).start()
    states: list[grpc.ChannelConnectivity] = []
    channel = grpc.insecure_channel(server.grpc_address)
    channel.subscribe(states.append, try_to_connect=True)
    try:
        ready = grpc.ChannelConnectivity.READY
        eventually(
            lambda: ready in states and grpc.ChannelConnectivity.IDLE in states[states.index(ready) :],
            what="the server to end the connection",
        )
    finally:
        channel.close()
        server.stop()


def _watch_ends_within(address: str, options: list, window_s: float) -> grpc.RpcError | None:
    """Hold a health Watch open, as the gateway's client does, for `window_s`; the error that ended it early,
    or None when it was still open."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    channel = grpc.insecure_channel(address, options=options)
    call = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
    try:
        next(call)
        ended = threading.Event()
        call.add_done_callback(lambda _: ended.set())
        if not ended.wait(window_s):
            return None
        try:
            next(call)
        except grpc.RpcError as exc:
            return exc
        return None
    finally:
        call.cancel()
        channel.close()


@pytest.mark.slow
def test_a_server_told_the_gateways_ping_policy_keeps_an_idle_watch_open(model_base_path, tmp_path):
    """The gateway's channel keeps a health Watch open and pings every KEEPALIVE_S while it is idle; a gRPC
    server by default takes a ping more often than every 5 minutes as abuse and ends the connection
    (GOAWAY "too_many_pings"). The deployed command's `grpc.http2.min_ping_interval_without_data_ms`
    (tests/test_serving_config.py) is what keeps it open. Here time runs faster: pings every 0.2 s, against
    a server told to accept one every 0.01 s (a wide margin: a stalled poller reading two pings close
    together must not count as abuse), and against one left at the default."""
    base = copy_models(model_base_path, tmp_path / "models")
    config = tmp_path / "models.config"
    config.write_text(models_config_text(base))
    policy = "--grpc_channel_arguments=grpc.http2.min_ping_interval_without_data_ms=10"
    told = ModelServerProcess(base, config, tmp_path / "told.log", extra_args=[policy]).start()
    default = ModelServerProcess(base, config, tmp_path / "default.log").start()
    # The gateway's own channel options, with the keepalive brought down to 0.2 s and no cap on pings
    # without data (gRPC's client otherwise spaces idle pings a minute apart).
    options = [
        option
        for option in ModelClient(told.grpc_address, keepalive_s=0.2).options
        if option[0] != "grpc.service_config"
    ] + [("grpc.http2.max_pings_without_data", 0)]
    try:
        started = time.monotonic()
        error = _watch_ends_within(default.grpc_address, options, window_s=30)
        refused_after = time.monotonic() - started
        assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE, error
        assert "too many pings" in (error.details() or "").lower(), error
        # The same pings for three times as long as the default server took to refuse them.
        assert _watch_ends_within(told.grpc_address, options, window_s=3 * refused_after + 1) is None
    finally:
        told.stop()
        default.stop()
