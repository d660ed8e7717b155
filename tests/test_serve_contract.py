"""mnist-serve against the official tensorflow_serving.apis stubs and plain HTTP: the model contract,
status and metadata shapes, predict in both REST formats, output_filter, error codes."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

TIMEOUT = 10


@pytest.fixture(scope="module")
def stubs(model_server):
    channel = grpc.insecure_channel(model_server.grpc_address)
    yield (
        prediction_service_pb2_grpc.PredictionServiceStub(channel),
        model_service_pb2_grpc.ModelServiceStub(channel),
    )
    channel.close()


def predict_request(
    images: np.ndarray, *, version=None, label=None, name="mnist", signature="serving_default"
):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    request.inputs["image"].CopyFrom(tf.make_tensor_proto(images))
    return request


def digits_batch(n: int) -> np.ndarray:
    rng = np.random.default_rng(n)
    return rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)


def test_status_lists_version_1_available(stubs):
    _, models = stubs
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "mnist"
    response = models.GetModelStatus(request, timeout=TIMEOUT)
    [status] = response.model_version_status
    assert status.version == 1
    assert status.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert status.status.error_code == 0


def test_metadata_describes_the_signature_contract(stubs):
    predictions, _ = stubs
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "mnist"
    response = predictions.GetModelMetadata(request, timeout=TIMEOUT)
    assert response.model_spec.name == "mnist" and response.model_spec.version.value == 1
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    signature = signatures.signature_def["serving_default"]
    image = signature.inputs["image"]
    assert image.dtype == tf.uint8.as_datatype_enum
    assert [d.size for d in image.tensor_shape.dim] == [-1, 28, 28]
    assert signature.outputs["probabilities"].dtype == tf.float32.as_datatype_enum
    assert [d.size for d in signature.outputs["probabilities"].tensor_shape.dim] == [-1, 10]
    assert signature.outputs["digit"].dtype == tf.int64.as_datatype_enum


def test_predict_by_label_matches_the_savedmodel(stubs, model_server):
    predictions, _ = stubs
    images = digits_batch(5)
    response = predictions.Predict(predict_request(images, label="stable"), timeout=TIMEOUT)
    assert response.model_spec.name == "mnist"
    assert response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "serving_default"
    probabilities = tf.make_ndarray(response.outputs["probabilities"])
    digits = tf.make_ndarray(response.outputs["digit"])
    expected = tf.saved_model.load(str(model_server.base_path / "mnist" / "1")).signatures["serving_default"](
        image=tf.constant(images)
    )
    np.testing.assert_allclose(probabilities, expected["probabilities"].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(digits, expected["digit"].numpy())
    assert probabilities.shape == (5, 10) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-4)
