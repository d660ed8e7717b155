"""mnist-serve against the official tensorflow_serving.apis stubs and plain HTTP: the model contract,
status and metadata shapes, predict in both REST formats, output_filter, error codes."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import requests
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


def test_output_filter_returns_only_the_requested_outputs(stubs):
    predictions, _ = stubs
    request = predict_request(digits_batch(2))
    request.output_filter.append("digit")
    response = predictions.Predict(request, timeout=TIMEOUT)
    assert list(response.outputs) == ["digit"]
    assert tf.make_ndarray(response.outputs["digit"]).shape == (2,)


def test_outputs_use_typed_value_fields_like_tf_serving(stubs):
    predictions, _ = stubs
    response = predictions.Predict(predict_request(digits_batch(1)), timeout=TIMEOUT)
    assert len(response.outputs["probabilities"].float_val) == 10
    assert len(response.outputs["digit"].int64_val) == 1
    assert not response.outputs["probabilities"].tensor_content


def grpc_error(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=TIMEOUT)
    return caught.value


@pytest.mark.parametrize(
    ("spec", "code", "message"),
    [
        ({"name": "nope"}, grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(nope)"),
        ({"version": 42}, grpc.StatusCode.NOT_FOUND, "Servable not found for request: Specific(mnist, 42)"),
        ({"label": "nope"}, grpc.StatusCode.INVALID_ARGUMENT, "Unrecognized servable version label: nope"),
        (
            {"signature": "nope"},
            grpc.StatusCode.FAILED_PRECONDITION,
            'Serving signature key "nope" not found.',
        ),
        ({"name": ""}, grpc.StatusCode.INVALID_ARGUMENT, "ModelSpec has no name specified."),
    ],
)
def test_predict_model_spec_errors(stubs, spec, code, message):
    predictions, _ = stubs
    error = grpc_error(predictions.Predict, predict_request(digits_batch(1), **spec))
    assert error.code() == code
    assert error.details() == message


def test_predict_rejects_a_wrong_dtype(stubs):
    predictions, _ = stubs
    error = grpc_error(predictions.Predict, predict_request(digits_batch(1).astype(np.float32)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "uint8" in error.details() and "float" in error.details()


@pytest.mark.parametrize("shape", [(28, 28), (1, 28, 27), (1, 784), (1, 28, 28, 1)])
def test_predict_rejects_a_wrong_shape(stubs, shape):
    predictions, _ = stubs
    error = grpc_error(predictions.Predict, predict_request(np.zeros(shape, np.uint8)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "shape" in error.details()


def test_predict_rejects_missing_and_unknown_inputs(stubs):
    predictions, _ = stubs
    request = predict_request(digits_batch(1))
    request.inputs["pixels"].CopyFrom(request.inputs.pop("image"))
    error = grpc_error(predictions.Predict, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input tensor alias not found in signature: pixels" in error.details()
    request.inputs["image"].CopyFrom(tf.make_tensor_proto(digits_batch(1)))
    error = grpc_error(predictions.Predict, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Sent extra: {pixels}" in error.details()
    del request.inputs["pixels"], request.inputs["image"]
    error = grpc_error(predictions.Predict, request)
    assert "Missing but required: {image}" in error.details()


def test_predict_rejects_an_unknown_output_filter(stubs):
    predictions, _ = stubs
    request = predict_request(digits_batch(1))
    request.output_filter.append("logits")
    error = grpc_error(predictions.Predict, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "output tensor alias not found in signature: logits" in error.details()


def test_predict_rejects_an_inconsistent_tensor_proto(stubs):
    predictions, _ = stubs
    request = predict_request(digits_batch(2))
    request.inputs["image"].tensor_content = b"\x00" * 10
    error = grpc_error(predictions.Predict, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_status_and_metadata_errors(stubs):
    predictions, models = stubs
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "nope"
    error = grpc_error(models.GetModelStatus, request)
    assert (error.code(), error.details()) == (
        grpc.StatusCode.NOT_FOUND,
        "Could not find any versions of model nope",
    )
    request.model_spec.name = "mnist"
    request.model_spec.version.value = 7
    error = grpc_error(models.GetModelStatus, request)
    assert (error.code(), error.details()) == (
        grpc.StatusCode.NOT_FOUND,
        "Could not find version 7 of model mnist",
    )
    metadata = get_model_metadata_pb2.GetModelMetadataRequest()
    metadata.model_spec.name = "mnist"
    error = grpc_error(predictions.GetModelMetadata, metadata)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    metadata.metadata_field.append("graph")
    error = grpc_error(predictions.GetModelMetadata, metadata)
    assert error.details() == "Metadata field graph is not supported"


def test_classify_is_unimplemented(stubs):
    from tensorflow_serving.apis import classification_pb2

    predictions, _ = stubs
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "mnist"
    assert grpc_error(predictions.Classify, request).code() == grpc.StatusCode.UNIMPLEMENTED


# ---- REST ----------------------------------------------------------------------------------------------


def test_rest_model_status(model_server):
    response = requests.get(f"{model_server.rest_url}/v1/models/mnist", timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.json() == {
        "model_version_status": [
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }
    by_version = requests.get(f"{model_server.rest_url}/v1/models/mnist/versions/1", timeout=TIMEOUT)
    assert by_version.json() == response.json()


def test_rest_metadata(model_server):
    response = requests.get(
        f"{model_server.rest_url}/v1/models/mnist/labels/stable/metadata", timeout=TIMEOUT
    )
    assert response.status_code == 200
    body = response.json()
    assert body["model_spec"] == {"name": "mnist", "signature_name": "", "version": "1"}
    signature = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["inputs"]["image"]["dtype"] == "DT_UINT8"
    assert [d["size"] for d in signature["inputs"]["image"]["tensor_shape"]["dim"]] == ["-1", "28", "28"]
    assert set(signature["outputs"]) == {"probabilities", "digit"}


def test_rest_predict_row_and_column_formats_agree_with_grpc(model_server, stubs):
    predictions, _ = stubs
    images = digits_batch(3)
    grpc_response = predictions.Predict(predict_request(images), timeout=TIMEOUT)
    expected_digits = tf.make_ndarray(grpc_response.outputs["digit"]).tolist()
    expected_probabilities = tf.make_ndarray(grpc_response.outputs["probabilities"])

    rows = requests.post(
        f"{model_server.rest_url}/v1/models/mnist:predict",
        json={"instances": images.tolist()},
        timeout=TIMEOUT,
    )
    assert rows.status_code == 200, rows.text
    predictions_json = rows.json()["predictions"]
    assert [p["digit"] for p in predictions_json] == expected_digits
    np.testing.assert_allclose(
        [p["probabilities"] for p in predictions_json], expected_probabilities, rtol=1e-6
    )

    named_rows = requests.post(
        f"{model_server.rest_url}/v1/models/mnist/labels/stable:predict",
        json={
            "signature_name": "serving_default",
            "instances": [{"image": image.tolist()} for image in images],
        },
        timeout=TIMEOUT,
    )
    assert named_rows.json() == rows.json()

    columns = requests.post(
        f"{model_server.rest_url}/v1/models/mnist/versions/1:predict",
        json={"inputs": {"image": images.tolist()}},
        timeout=TIMEOUT,
    )
    assert columns.status_code == 200
    outputs = columns.json()["outputs"]
    assert outputs["digit"] == expected_digits
    np.testing.assert_allclose(outputs["probabilities"], expected_probabilities, rtol=1e-6)


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("post", "/v1/models/nope:predict", {"instances": [[[0] * 28] * 28]}, 404, "Servable not found"),
        (
            "post",
            "/v1/models/mnist/versions/9:predict",
            {"instances": [[[0] * 28] * 28]},
            404,
            "Specific(mnist, 9)",
        ),
        ("post", "/v1/models/mnist/labels/x:predict", {"instances": [[[0] * 28] * 28]}, 400, "Unrecognized"),
        ("post", "/v1/models/mnist:predict", {"instances": [[[0.5] * 28] * 28]}, 400, "integers"),
        ("post", "/v1/models/mnist:predict", {"instances": [[[300] * 28] * 28]}, 400, "out of range"),
        ("post", "/v1/models/mnist:predict", {"instances": [[[0] * 27] * 28]}, 400, "shape"),
        ("post", "/v1/models/mnist:predict", {"instances": [[0, 1], [0]]}, 400, "unequal"),
        ("post", "/v1/models/mnist:predict", {"inputs": {"pixels": [[0]]}}, 400, "alias not found"),
        ("post", "/v1/models/mnist:predict", {"inputs": [], "instances": []}, 400, "only one of"),
        ("post", "/v1/models/mnist:predict", {"signature": "x"}, 400, "Missing 'inputs' or 'instances'"),
        ("post", "/v1/models/mnist:predict", [1, 2], 400, "JSON object"),
        ("post", "/v1/models/mnist:classify", {"examples": []}, 501, "not supported"),
        ("post", "/v1/models/mnist", {}, 400, "Malformed request"),
        ("get", "/v1/models", None, 400, "Missing model name"),
        ("get", "/v1/models/nope", None, 404, "Could not find any versions of model nope"),
        ("get", "/v1/models/mnist/versions/5/metadata", None, 404, "Specific(mnist, 5)"),
        ("get", "/v2/models/mnist", None, 404, "Not found"),
    ],
)
def test_rest_errors(model_server, method, path, body, status, message):
    response = getattr(requests, method)(f"{model_server.rest_url}{path}", json=body, timeout=TIMEOUT)
    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/json"
    assert message in response.json()["error"]


def test_rest_rejects_broken_json_and_oversized_bodies(model_server):
    url = f"{model_server.rest_url}/v1/models/mnist:predict"
    response = requests.post(url, data=b"{not json", timeout=TIMEOUT)
    assert response.status_code == 400 and "JSON" in response.json()["error"]
    response = requests.post(url, data=b"x" * (17 * 1024 * 1024), timeout=TIMEOUT)
    assert response.status_code == 413


def test_prometheus_metrics_count_requests(model_server):
    requests.get(f"{model_server.rest_url}/v1/models/mnist", timeout=TIMEOUT)
    page = requests.get(f"{model_server.rest_url}/monitoring/prometheus/metrics", timeout=TIMEOUT)
    assert page.status_code == 200
    lines = page.text.splitlines()
    assert any(
        line.startswith(":tensorflow:serving:request_count_total{")
        and 'API="GetModelStatus"' in line
        and 'model_name="mnist"' in line
        for line in lines
    )
    assert 'mnist_serve_model_version_state{model_name="mnist",state="AVAILABLE",version="1"} 1.0' in lines
