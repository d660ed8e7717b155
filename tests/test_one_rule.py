"""Rules that must hold in more than one service, which cannot import each other: the copies are pinned here.

The gateway must never import `training` or `serving` (its image has no tensorflow), so the model contract it
speaks and the log format it writes are copies; the OpenAPI document repeats the gateway's own input rules.
"""

from __future__ import annotations

import re
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
