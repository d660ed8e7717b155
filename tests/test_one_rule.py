"""Rules that must hold in more than one service, which cannot import each other: the copies are pinned here.

The gateway must never import `training` or `serving` (its image has no tensorflow), so the model contract it
speaks and the log format it writes are copies; the OpenAPI document repeats the gateway's own input rules.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from pathlib import Path

import yaml

import gateway
from gateway import model_client, settings
from training import contract

OPENAPI = yaml.safe_load((Path(gateway.__file__).parent / "openapi.yaml").read_text(encoding="utf-8"))


def test_the_gateway_speaks_the_trained_models_contract():
    for name in (
        "MODEL_NAME",
        "SIGNATURE_NAME",
        "INPUT_KEY",
        "PROBABILITIES_KEY",
        "DIGIT_KEY",
        "NUM_CLASSES",
    ):
        assert getattr(model_client, name) == getattr(contract, name), name
    assert tuple(model_client.IMAGE_SHAPE) == tuple(contract.IMAGE_SHAPE)
    assert settings.Settings().model_name == contract.MODEL_NAME


def test_the_openapi_document_states_the_gateways_label_rule():
    label = OPENAPI["components"]["parameters"]["Label"]["schema"]
    assert label["pattern"] == settings.LABEL_PATTERN
    assert re.fullmatch(label["pattern"], "stable-2.1_x") and not re.fullmatch(label["pattern"], "a b")


def test_the_gateway_and_the_model_server_write_one_log_format():
    import logging
    import sys

    from gateway.logs import JsonFormatter as GatewayFormat
    from serving.local_server.logs import JsonFormatter as ModelServerFormat

    try:
        raise ValueError("boom")
    except ValueError:
        exc_info = sys.exc_info()
    records = [
        logging.makeLogRecord({"name": "a", "levelname": "INFO", "msg": "plain"}),
        logging.makeLogRecord(
            {"name": "b", "levelname": "WARNING", "msg": "%s é", "args": ("x",), "model": "mnist", "n": 3}
        ),
        logging.makeLogRecord({"name": "c", "levelname": "ERROR", "msg": "failed", "exc_info": exc_info}),
        # an extra that collides with a format field does not replace it
        logging.makeLogRecord({"name": "d", "levelname": "INFO", "msg": "m", "level": "fake", "_private": 1}),
    ]
    for record in records:
        line = GatewayFormat().format(record)
        assert line == ModelServerFormat().format(record)
        assert list(json.loads(line))[:4] == ["time", "level", "logger", "message"]
    assert json.loads(GatewayFormat().format(records[2]))["exception"].endswith("ValueError: boom")
    assert json.loads(GatewayFormat().format(records[3]))["level"] == "INFO"


def test_the_openapi_document_states_what_the_routes_accept():
    from gateway.routes import predictions

    schemas = OPENAPI["components"]["schemas"]
    assert schemas["PredictionId"]["pattern"] == predictions.TIME_UUID_PATTERN
    assert schemas["Cursor"]["pattern"] == predictions.CURSOR_PATTERN
    # what the API hands out matches what it takes back
    assert re.fullmatch(predictions.TIME_UUID_PATTERN, str(uuid.uuid1()))
    assert not re.fullmatch(predictions.TIME_UUID_PATTERN, str(uuid.uuid4()))
    for _ in range(200):
        cursor = predictions.encode_cursor(uuid.uuid1().bytes)
        assert re.fullmatch(predictions.CURSOR_PATTERN, cursor), cursor
        assert predictions.decode_cursor(cursor) == base64.urlsafe_b64decode(cursor + "==")
    assert not re.fullmatch(predictions.CURSOR_PATTERN, predictions.encode_cursor(uuid.uuid4().bytes))
    # the cursor that continues a scan at a day boundary is one too
    from datetime import date

    from gateway.store.buckets import start_of_day_cursor

    continuation = predictions.encode_cursor(start_of_day_cursor(date(2026, 11, 30)).bytes)
    assert re.fullmatch(predictions.CURSOR_PATTERN, continuation), continuation


def test_the_feedback_export_reads_cassandra_settings_by_the_gateways_rules():
    """`mnist-train dataset export` runs in the trainer image (no gateway package): its copy of the rules."""
    from training.feedback_export import KEYSPACE_PATTERN, CassandraSettings

    assert KEYSPACE_PATTERN == settings.KEYSPACE_PATTERN
    env = {
        "CASSANDRA_HOSTS": " a, b ,",
        "CASSANDRA_PORT": "9142",
        "CASSANDRA_KEYSPACE": "ks_1",
        "CASSANDRA_LOCAL_DC": "dc2",
        "CASSANDRA_USERNAME": "u",
        "CASSANDRA_PASSWORD": "p",
    }
    ours, theirs = CassandraSettings.from_env(env), settings.Settings.from_env(env)
    assert ours.hosts == theirs.cassandra_hosts and ours.port == theirs.cassandra_port
    assert (ours.keyspace, ours.local_dc, ours.username) == (
        theirs.cassandra_keyspace,
        theirs.cassandra_local_dc,
        theirs.cassandra_username,
    )


def test_the_openapi_document_states_the_form_limits():
    from gateway.settings import Settings

    bodies = [
        OPENAPI["components"]["requestBodies"]["Upload"],
        OPENAPI["paths"]["/mnist"]["post"]["requestBody"],
    ]
    forms = [body["content"]["multipart/form-data"]["schema"] for body in bodies]
    for form in forms:
        assert form["maxProperties"] == Settings().max_form_parts
        assert form["additionalProperties"]["maxLength"] == Settings().max_form_field_bytes
