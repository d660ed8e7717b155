"""Contract tests: the gateway's own TF Serving protos against the official `tensorflow_serving.apis` classes.

Both live in one process: ours sit in their own descriptor pool (gateway/tfs_protos/_pool.py), so the
official ones keep protobuf's default pool.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import descriptor
from tensorflow_serving.apis import get_model_status_pb2 as official_status
from tensorflow_serving.apis import model_service_pb2 as official_model_service
from tensorflow_serving.apis import predict_pb2 as official_predict
from tensorflow_serving.apis import prediction_service_pb2 as official_prediction_service

from gateway.model_client import images_to_tensor, tensor_to_array
from gateway.tfs_protos import (
    generate,
    get_model_status_pb2,
    model_service_pb2,
    predict_pb2,
    prediction_service_pb2,
    tensor_pb2,
    types_pb2,
)

OUR_MESSAGES = [
    (predict_pb2.PredictRequest, official_predict.PredictRequest),
    (predict_pb2.PredictResponse, official_predict.PredictResponse),
    (get_model_status_pb2.GetModelStatusRequest, official_status.GetModelStatusRequest),
    (get_model_status_pb2.GetModelStatusResponse, official_status.GetModelStatusResponse),
]


def _rng_images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 28, 28), dtype=np.uint8)


def _walk(desc: descriptor.Descriptor, seen: set[str]):
    """Every message type reachable from desc (fields, map entries, nested types)."""
    if desc.full_name in seen:
        return
    seen.add(desc.full_name)
    yield desc
    for field in desc.fields:
        if field.message_type is not None:
            yield from _walk(field.message_type, seen)


def test_committed_code_is_what_make_protos_generates(tmp_path, repo_root):
    # A subprocess: protoc's compiler and TensorFlow's protobuf library crash when loaded in one process.
    subprocess.run(
        [sys.executable, "-m", "gateway.tfs_protos.generate", str(tmp_path)], cwd=repo_root, check=True
    )
    regenerated = generate.generated_files(tmp_path)
    committed = generate.generated_files(repo_root)
    assert sorted(regenerated) == sorted(committed)
    for name, text in regenerated.items():
        assert committed[name] == text, f"{name} is stale or hand-edited: run `make protos`"


def test_our_messages_live_in_their_own_pool_with_the_official_full_names():
    for ours, official in OUR_MESSAGES:
        assert ours.DESCRIPTOR.full_name == official.DESCRIPTOR.full_name
        assert ours.DESCRIPTOR.file.pool is not official.DESCRIPTOR.file.pool
        assert ours.DESCRIPTOR.file.name.startswith("gateway/tfs_protos/")


@pytest.mark.parametrize("ours, official", OUR_MESSAGES, ids=lambda m: m.DESCRIPTOR.name)
def test_every_field_has_the_official_number_type_and_name(ours, official):
    official_types = {d.full_name: d for d in _walk(official.DESCRIPTOR, set())}
    checked = 0
    for desc in _walk(ours.DESCRIPTOR, set()):
        other = official_types[desc.full_name]
        for field in desc.fields:
            twin = other.fields_by_number[field.number]
            mine = (field.name, field.type, field.is_repeated)
            assert mine == (twin.name, twin.type, twin.is_repeated), field.full_name
            if field.message_type is not None:
                assert field.message_type.full_name == twin.message_type.full_name
            if field.enum_type is not None:
                assert field.enum_type.full_name == twin.enum_type.full_name
                official_values = {v.name: v.number for v in twin.enum_type.values}
                for value in field.enum_type.values:
                    assert official_values[value.name] == value.number, value.name
            if field.containing_oneof is not None:
                assert twin.containing_oneof.name == field.containing_oneof.name
            checked += 1
    assert checked >= 5  # the walk reached the nested types (ModelSpec, TensorProto...)


def test_service_method_paths_are_the_official_ones():
    pairs = [
        (prediction_service_pb2, official_prediction_service, "PredictionService", "Predict"),
        (model_service_pb2, official_model_service, "ModelService", "GetModelStatus"),
    ]
    for ours, official, service, method in pairs:
        mine = ours.DESCRIPTOR.services_by_name[service].methods_by_name[method]
        theirs = official.DESCRIPTOR.services_by_name[service].methods_by_name[method]
        assert mine.full_name == theirs.full_name == f"tensorflow.serving.{service}.{method}"
        assert mine.input_type.full_name == theirs.input_type.full_name
        assert mine.output_type.full_name == theirs.output_type.full_name


def test_datatype_numbers_match_the_official_enum():
    from tensorflow.core.framework import types_pb2 as official_types

    for value in types_pb2.DataType.DESCRIPTOR.values:
        assert official_types.DataType.Value(value.name) == value.number


@pytest.mark.parametrize(
    "spec", [{"version_label": "stable"}, {"version": 7}, {}], ids=["label", "version", "latest"]
)
def test_our_predict_request_parses_as_the_official_one(spec):
    images = _rng_images(3)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "mnist"
    request.model_spec.signature_name = "serving_default"
    if "version" in spec:
        request.model_spec.version.value = spec["version"]
    if "version_label" in spec:
        request.model_spec.version_label = spec["version_label"]
    request.inputs["image"].CopyFrom(images_to_tensor(images))
    request.output_filter.append("probabilities")

    official = official_predict.PredictRequest.FromString(request.SerializeToString())

    assert official.model_spec.name == "mnist"
    assert official.model_spec.signature_name == "serving_default"
    assert official.model_spec.WhichOneof("version_choice") == (next(iter(spec)) if spec else None)
    if "version" in spec:
        assert official.model_spec.version.value == 7
    if "version_label" in spec:
        assert official.model_spec.version_label == "stable"
    assert list(official.output_filter) == ["probabilities"]
    decoded = tf.make_ndarray(official.inputs["image"])
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, images)
    # Byte-identical when the official side serializes it back.
    assert predict_pb2.PredictRequest.FromString(official.SerializeToString()) == request


@pytest.mark.parametrize("form", ["tensor_content", "int_val"])
def test_official_uint8_request_decodes_with_ours(form):
    images = _rng_images(2, seed=1)
    official = official_predict.PredictRequest()
    official.model_spec.name = "mnist"
    official.model_spec.version.value = 2
    if form == "tensor_content":
        official.inputs["image"].CopyFrom(tf.make_tensor_proto(images))
        assert official.inputs["image"].tensor_content
    else:
        tensor = official.inputs["image"]
        tensor.dtype = tf.uint8.as_datatype_enum
        tensor.tensor_shape.dim.add(size=2)
        tensor.tensor_shape.dim.add(size=28)
        tensor.tensor_shape.dim.add(size=28)
        tensor.int_val.extend(images.ravel().tolist())

    ours = predict_pb2.PredictRequest.FromString(official.SerializeToString())

    assert ours.model_spec.WhichOneof("version_choice") == "version"
    assert ours.model_spec.version.value == 2
    decoded = tensor_to_array(ours.inputs["image"])
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, images)


@pytest.mark.parametrize("form", ["tensor_content", "repeated"])
def test_official_predict_response_decodes_with_ours(form):
    probabilities = np.random.default_rng(2).dirichlet(np.ones(10), size=4).astype(np.float32)
    digits = probabilities.argmax(axis=1).astype(np.int64)
    official = official_predict.PredictResponse()
    official.model_spec.name = "mnist"
    official.model_spec.version.value = 3
    official.model_spec.signature_name = "serving_default"
    if form == "tensor_content":
        official.outputs["probabilities"].CopyFrom(tf.make_tensor_proto(probabilities))
        official.outputs["digit"].CopyFrom(tf.make_tensor_proto(digits))
    else:
        probs = official.outputs["probabilities"]
        probs.dtype = tf.float32.as_datatype_enum
        probs.tensor_shape.dim.add(size=4)
        probs.tensor_shape.dim.add(size=10)
        probs.float_val.extend(probabilities.ravel().tolist())
        digit = official.outputs["digit"]
        digit.dtype = tf.int64.as_datatype_enum
        digit.tensor_shape.dim.add(size=4)
        digit.int64_val.extend(digits.tolist())
        np.testing.assert_array_equal(tf.make_ndarray(probs), probabilities)

    ours = predict_pb2.PredictResponse.FromString(official.SerializeToString())

    assert ours.model_spec.version.value == 3
    np.testing.assert_array_equal(tensor_to_array(ours.outputs["probabilities"]), probabilities)
    np.testing.assert_array_equal(tensor_to_array(ours.outputs["digit"]), digits)
    assert tensor_to_array(ours.outputs["digit"]).dtype == np.int64


def test_our_predict_response_parses_as_the_official_one():
    ours = predict_pb2.PredictResponse()
    ours.model_spec.name = "mnist"
    ours.model_spec.version.value = 12
    probs = ours.outputs["probabilities"]
    probs.dtype = types_pb2.DT_FLOAT
    probs.tensor_shape.dim.add(size=1)
    probs.tensor_shape.dim.add(size=10)
    probs.float_val.extend([0.1] * 10)
    digit = ours.outputs["digit"]
    digit.dtype = types_pb2.DT_INT64
    digit.tensor_shape.dim.add(size=1)
    digit.int64_val.append(9)

    official = official_predict.PredictResponse.FromString(ours.SerializeToString())

    assert official.model_spec.version.value == 12
    np.testing.assert_allclose(tf.make_ndarray(official.outputs["probabilities"]), np.full((1, 10), 0.1))
    np.testing.assert_array_equal(tf.make_ndarray(official.outputs["digit"]), [9])


def test_compact_repeated_form_repeats_the_last_value_like_tensorflow():
    official = tf.make_tensor_proto(np.full((2, 3), 7, dtype=np.int32))  # TF stores one int_val
    tensor = tensor_pb2.TensorProto.FromString(official.SerializeToString())
    np.testing.assert_array_equal(tensor_to_array(tensor), tf.make_ndarray(official))


def test_fields_we_left_out_survive_a_round_trip_through_ours():
    official = official_predict.PredictRequest(client_id=b"abc")
    official.model_spec.name = "mnist"
    ours = predict_pb2.PredictRequest.FromString(official.SerializeToString())
    back = official_predict.PredictRequest.FromString(ours.SerializeToString())
    assert back.client_id == b"abc"


def test_model_status_messages_round_trip_both_ways():
    ours = get_model_status_pb2.GetModelStatusRequest()
    ours.model_spec.name = "mnist"
    ours.model_spec.version_label = "canary"
    official = official_status.GetModelStatusRequest.FromString(ours.SerializeToString())
    assert official.model_spec.version_label == "canary"

    official_response = official_status.GetModelStatusResponse()
    for version, state in [(1, "AVAILABLE"), (2, "LOADING"), (3, "END")]:
        status = official_response.model_version_status.add(version=version)
        status.state = official_status.ModelVersionStatus.State.Value(state)
    official_response.model_version_status[2].status.error_code = 5  # NOT_FOUND
    official_response.model_version_status[2].status.error_message = "version 3 was removed"

    response = get_model_status_pb2.GetModelStatusResponse.FromString(official_response.SerializeToString())

    names = get_model_status_pb2.ModelVersionStatus.State.Name
    assert [(s.version, names(s.state)) for s in response.model_version_status] == [
        (1, "AVAILABLE"),
        (2, "LOADING"),
        (3, "END"),
    ]
    assert response.model_version_status[2].status.error_code == 5
    assert response.model_version_status[2].status.error_message == "version 3 was removed"
    assert (
        official_status.GetModelStatusResponse.FromString(response.SerializeToString()) == official_response
    )
