"""The model contract shared with the model server and the gateway (see docs/training.md).

Defined once here; the export writes it and the contract tests check it.
"""

from __future__ import annotations

MODEL_NAME = "mnist"
SIGNATURE_NAME = "serving_default"
INPUT_KEY = "image"
PROBABILITIES_KEY = "probabilities"
DIGIT_KEY = "digit"
IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10

ASSETS_EXTRA = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"
METRICS_FILE = "metrics.json"
