"""Concurrency and server-side batching: many client threads get exactly their own answers, with batching
off (the shared `model_server`) and on (a server of this module); labels under
--allow_version_labels_for_unavailable_models."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import (
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tests.fixtures.model_server import ModelServerProcess, copy_models, models_config_text

TIMEOUT = 30
MAX_BATCH = 8


@pytest.fixture(scope="module")
def batching_server(model_base_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-batching")
    base = copy_models(model_base_path, root / "models")
    config = root / "models.config"
    config.write_text(models_config_text(base))
    batching = root / "batching_parameters.txt"
    batching.write_text(
        f"max_batch_size {{ value: {MAX_BATCH} }}\n"
        "batch_timeout_micros { value: 20000 }\n"
        "max_enqueued_batches { value: 100 }\n"
        "num_batch_threads { value: 1 }\n"
    )
    process = ModelServerProcess(
        base,
        config,
        root / "mnist-serve.log",
        extra_args=["--enable_batching", f"--batching_parameters_file={batching}"],
    )
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def reference(model_base_path):
    """The same SavedModel called in-process: what every answer must equal."""
    signature = tf.saved_model.load(str(model_base_path / "mnist" / "1")).signatures["serving_default"]
    return lambda images: {k: v.numpy() for k, v in signature(image=tf.constant(images)).items()}


def images_for(seed: int, rows: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(rows, 28, 28), dtype=np.uint8)


def grpc_predict(stub, images, label=None):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "mnist"
    if label:
        request.model_spec.version_label = label
    request.inputs["image"].CopyFrom(tf.make_tensor_proto(images))
    response = stub.Predict(request, timeout=TIMEOUT)
    return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}


def rest_predict(url, images):
    response = requests.post(
        f"{url}/v1/models/mnist:predict", json={"inputs": images.tolist()}, timeout=TIMEOUT
    )
    response.raise_for_status()
    return {k: np.asarray(v) for k, v in response.json()["outputs"].items()}


def hammer(server, reference, *, threads: int, calls: int) -> int:
    channel = grpc.insecure_channel(server.grpc_address)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

    def client(worker: int) -> int:
        for call in range(calls):
            images = images_for(worker * 1000 + call, rows=1 + (worker + call) % 3)
            got = rest_predict(server.rest_url, images) if call % 4 == 3 else grpc_predict(stub, images)
            want = reference(images)
            np.testing.assert_array_equal(got["digit"], want["digit"])
            np.testing.assert_allclose(got["probabilities"], want["probabilities"], rtol=1e-5, atol=1e-6)
        return calls

    try:
        with ThreadPoolExecutor(threads) as pool:
            return sum(pool.map(client, range(threads)))
    finally:
        channel.close()


def test_many_concurrent_clients_without_batching(model_server, reference):
    assert hammer(model_server, reference, threads=16, calls=12) == 16 * 12


def test_many_concurrent_clients_with_batching(batching_server, reference):
    assert hammer(batching_server, reference, threads=24, calls=8) == 24 * 8
    page = requests.get(f"{batching_server.rest_url}/monitoring/prometheus/metrics", timeout=TIMEOUT).text
    total = float(re.search(r'processed_batch_size_sum\{model_name="mnist"\} (\S+)', page).group(1))
    count = float(re.search(r'processed_batch_size_count\{model_name="mnist"\} (\S+)', page).group(1))
    assert count > 0
    assert total / count > 1.5  # requests were merged, not run one by one


def test_a_task_larger_than_max_batch_size_is_refused(batching_server):
    channel = grpc.insecure_channel(batching_server.grpc_address)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    with pytest.raises(grpc.RpcError) as caught:
        grpc_predict(stub, images_for(1, MAX_BATCH + 1))
    channel.close()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        caught.value.details()
        == f"Task size {MAX_BATCH + 1} is larger than maximum input batch size {MAX_BATCH}"
    )


def test_labels_for_unavailable_versions_with_the_flag(batching_server):
    """A new label may point at a version that is not loaded; an existing label may not be moved to one."""
    channel = grpc.insecure_channel(batching_server.grpc_address)
    models = model_service_pb2_grpc.ModelServiceStub(channel)
    predictions = prediction_service_pb2_grpc.PredictionServiceStub(channel)

    def reload(labels):
        request = model_management_pb2.ReloadConfigRequest()
        text_format.Parse(models_config_text(batching_server.base_path, labels=labels), request.config)
        models.HandleReloadConfigRequest(request, timeout=TIMEOUT)

    try:
        reload({"stable": 1, "canary": 7})
        with pytest.raises(grpc.RpcError) as caught:
            grpc_predict(predictions, images_for(2, 1), label="canary")
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert caught.value.details() == "Servable not found for request: Specific(mnist, 7)"
        with pytest.raises(grpc.RpcError) as caught:
            reload({"stable": 7, "canary": 7})
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert grpc_predict(predictions, images_for(3, 1), label="stable")["digit"].shape == (1,)
    finally:
        reload({"stable": 1})
        channel.close()


@pytest.fixture(scope="module")
def flat_model_server(tmp_path_factory):
    """Batching in front of a model whose output's 0th dimension is not the batch: it flattens the images
    (declared [-1], so the signature looks batchable)."""
    root = tmp_path_factory.mktemp("serve-batching-flat")
    module = tf.Module()
    module.flatten = tf.function(
        lambda image: {"pixels": tf.reshape(tf.cast(image, tf.float32), [-1])},
        input_signature=[tf.TensorSpec([None, 28, 28], tf.uint8, name="image")],
    )
    tf.saved_model.save(module, str(root / "models" / "flat" / "1"), signatures=module.flatten)
    config = root / "models.config"
    config.write_text(models_config_text(root / "models", model_name="flat", labels={}))
    batching = root / "batching_parameters.txt"
    # Two one-image requests fill a batch, which then runs at once: the long timeout only bounds a lone one.
    batching.write_text("max_batch_size { value: 2 }\nbatch_timeout_micros { value: 30000000 }\n")
    process = ModelServerProcess(
        root / "models",
        config,
        root / "mnist-serve.log",
        model_name="flat",
        extra_args=["--enable_batching", f"--batching_parameters_file={batching}"],
    )
    process.start()
    yield process
    process.stop()


def test_a_batch_whose_output_rows_are_not_its_requests_rows_fails_them(flat_model_server):
    """Split by rows, each client would get a value of the other's image: both calls fail instead, as in TF
    Serving's batching session."""
    channel = grpc.insecure_channel(flat_model_server.grpc_address)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

    def predict(value: int):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "flat"
        request.inputs["image"].CopyFrom(tf.make_tensor_proto(np.full((1, 28, 28), value, np.uint8)))
        try:
            return stub.Predict(request, timeout=TIMEOUT)
        except grpc.RpcError as exc:
            return exc

    try:
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(predict, [1, 2]))
    finally:
        channel.close()
    for answer in answers:
        assert isinstance(answer, grpc.RpcError), f"a batched answer was split by rows: {answer}"
        assert answer.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert answer.details() == (
            "Batched output tensor's 0th dimension does not equal the sum of the 0th dimension sizes of the "
            "input tensors (output 'pixels': 1568 rows for 2)"
        )
