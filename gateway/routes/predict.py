"""`POST /v1/predict`: an upload in, the model's answer out (the flow itself: gateway/prediction.py).

This module only reads HTTP: the upload (multipart `image` or `pic`, or a raw body), the model the client
names (`?label=` or `?version=`: pinned), whether the answer shows the model's input (`?input=png`) and the
client key of the sticky traffic split (`X-Client-Id`, else the client's address). The original `/mnist`
form (gateway/routes/legacy.py) reads the same way.
"""

from __future__ import annotations

import re

from flask import Blueprint, jsonify, request

from gateway import prediction, request_limits, services
from gateway.errors import InvalidInput
from gateway.prediction import Answer, Upload
from gateway.rollout import CLIENT_ID_PATTERN, Target
from gateway.settings import LABEL_RULE, is_label

bp = Blueprint("predict", __name__)

UPLOAD_FIELDS = ("image", "pic")
MAX_FILENAME_CHARS = 255
_CLIENT_ID = re.compile(CLIENT_ID_PATTERN)


def clean_filename(name: str | None) -> str | None:
    """The client's file name is data: kept as given (bounded), never used as a path."""
    if not name:
        return None
    return name[:MAX_FILENAME_CHARS]


def read_upload(fields: tuple[str, ...] = UPLOAD_FIELDS) -> Upload:
    if request.mimetype == "multipart/form-data":
        for field in fields:
            file = request.files.get(field)
            if file is not None:
                data = file.read()
                if not data:
                    raise InvalidInput(f"the uploaded file in field {field!r} is empty")
                return Upload(data, clean_filename(file.filename))
        names = " or ".join(repr(f) for f in fields)
        raise InvalidInput(f"the multipart form has no file field {names}")
    data = request_limits.read_body()
    if not data:
        raise InvalidInput(
            "no image: send multipart/form-data with a file field 'image' (or 'pic'), "
            "or the image bytes as the body"
        )
    return Upload(data, clean_filename(request.headers.get("X-Filename")))


def pinned_choice() -> Target | None:
    """`?version=N` or `?label=NAME` pin the model; None lets the rollout choose."""
    label = request.args.get("label")
    version = request.args.get("version")
    if label is not None and version is not None:
        raise InvalidInput("choose the model by 'label' or by 'version', not both")
    if version is not None:
        number = request_limits.whole_number(version, 1, 2**63 - 1)
        if number is None:
            raise InvalidInput("'version' must be a positive integer")
        return Target(version=number)
    if label is not None:
        if not is_label(label):
            raise InvalidInput(f"'label' must be {LABEL_RULE}")
        return Target(label=label)
    return None


def client_key() -> str:
    """What keeps a client on one side of the traffic split: `X-Client-Id`, else the client's address."""
    given = request.headers.get("X-Client-Id")
    if given is None:
        return f"addr:{request.remote_addr}"
    if not _CLIENT_ID.fullmatch(given):
        raise InvalidInput("'X-Client-Id' must be 1-128 printable ASCII characters")
    return f"id:{given}"


def predict_request(fields: tuple[str, ...] = UPLOAD_FIELDS) -> Answer:
    """The whole request read, then answered by the prediction service."""
    pinned = pinned_choice()
    key = client_key()
    upload = read_upload(fields)
    return prediction.predict(
        services.current(), upload, pinned=pinned, client_key=key, client_addr=request.remote_addr
    )


def wants_input() -> bool:
    """`?input=png` adds the 28x28 PNG the model saw to the answer (its encoding is CPU most clients skip)."""
    wanted = request.args.get("input")
    if wanted is not None and wanted != "png":
        raise InvalidInput("'input' must be 'png' (the 28x28 image the model saw) or absent")
    return wanted is not None


@bp.post("/v1/predict")
def predict():
    with_input = wants_input()
    return jsonify(predict_request().to_json(with_input=with_input))
