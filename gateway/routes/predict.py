"""`POST /v1/predict`: an upload in, the model's answer out, the prediction recorded on the way.

The flow (also used by the original `/mnist` form): read the upload (multipart `image` or `pic`, or a raw
body), preprocess it into the 28x28 MNIST-style input, ask the model server for the chosen label or version,
record the prediction through the store (never waiting on Cassandra), answer.
"""

from __future__ import annotations

import base64
import logging
import secrets
import struct
import time
import uuid
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from flask import Blueprint, jsonify, request

from gateway import request_limits, services
from gateway.errors import (
    GatewayError,
    ImageTooLarge,
    InvalidInput,
    ModelUnavailable,
    ModelVersionNotFound,
    StoreUnavailable,
)
from gateway.logs import add_log_fields
from gateway.preprocess import to_mnist
from gateway.services import Services
from gateway.settings import LABEL_RULE, is_label
from gateway.store import PredictionRecord

bp = Blueprint("predict", __name__)
log = logging.getLogger("gateway.predict")

UPLOAD_FIELDS = ("image", "pic")
MAX_FILENAME_CHARS = 255


@dataclass(frozen=True)
class Upload:
    data: bytes
    filename: str | None


@dataclass(frozen=True)
class Answer:
    id: uuid.UUID
    created_at: datetime
    filename: str | None
    image_sha256: str  # of the uploaded bytes (hashed once, by the preprocessing)
    digit: int
    probabilities: list[float]
    model_name: str
    model_version: int | None
    label: str | None
    image: np.ndarray  # uint8 [28, 28], what the model saw
    preprocess_ms: float
    model_ms: float
    total_ms: float

    def to_json(self) -> dict:
        return {
            "id": str(self.id),
            "created_at": self.created_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "filename": self.filename,
            "digit": self.digit,
            "probabilities": self.probabilities,
            "model": {"name": self.model_name, "version": self.model_version, "label": self.label},
            "timings_ms": {
                "preprocess": round(self.preprocess_ms, 3),
                "model": round(self.model_ms, 3),
                "total": round(self.total_ms, 3),
            },
            "input": {"width": 28, "height": 28, "png_base64": png_base64(self.image)},
        }


def new_timeuuid() -> uuid.UUID:
    """A version-1 (time) UUID with a random node, so ids from many workers and hosts never collide."""
    return uuid.uuid1(node=secrets.randbits(48) | 0x010000000000)


def png_base64(image: np.ndarray) -> str:
    """An 8-bit grey PNG of a small image, base64: written directly (a fifth of Pillow's CPU for 28x28)."""
    pixels = np.ascontiguousarray(image, dtype=np.uint8)
    height, width = pixels.shape
    rows = np.zeros((height, width + 1), dtype=np.uint8)  # each row starts with filter type 0 (none)
    rows[:, 1:] = pixels
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8 bits, grey, deflate, no interlace
    png = b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            _png_chunk(b"IHDR", header),
            _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), 1)),  # 784 bytes: level 1 is enough
            _png_chunk(b"IEND", b""),
        )
    )
    return base64.b64encode(png).decode("ascii")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


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


def model_choice(default_label: str) -> tuple[str | None, int | None]:
    """`?version=N` or `?label=NAME` choose the model; otherwise the configured label."""
    label = request.args.get("label")
    version = request.args.get("version")
    if label is not None and version is not None:
        raise InvalidInput("choose the model by 'label' or by 'version', not both")
    if version is not None:
        if not (version.isascii() and version.isdigit()) or not 0 < int(version) < 2**63:
            raise InvalidInput("'version' must be a positive integer")
        return None, int(version)
    if label is not None:
        if not is_label(label):
            raise InvalidInput(f"'label' must be {LABEL_RULE}")
        return label, None
    return default_label, None


def predict_upload(upload: Upload, *, label: str | None, version: int | None) -> Answer:
    svc = services.current()
    started = time.perf_counter()
    try:
        pre = to_mnist(upload.data, max_pixels=svc.settings.max_image_pixels)
    except ImageTooLarge as exc:  # the pixel limit: its setting is the gateway's to name
        svc.metrics.preprocess_seconds.observe(time.perf_counter() - started)
        raise ImageTooLarge(f"{exc.message} (GATEWAY_MAX_IMAGE_PIXELS)") from None
    except GatewayError:
        svc.metrics.preprocess_seconds.observe(time.perf_counter() - started)
        raise
    preprocessed = time.perf_counter()
    svc.metrics.preprocess_seconds.observe(preprocessed - started)
    image = np.asarray(pre.image, dtype=np.uint8)
    try:
        result = svc.model_client.predict(image[np.newaxis], label=label, version=version)
    except ModelVersionNotFound as exc:
        svc.metrics.model_errors.labels(exc.code).inc()
        if version is None and label == svc.settings.model_label:
            # The configured label itself is missing (not loaded yet, or mis-set): nobody can be answered,
            # so it is an outage to retry later, not the client's mistake.
            raise ModelUnavailable(exc.message) from None
        raise ModelVersionNotFound(f"{exc.message}; omit it for the default") from None
    except GatewayError as exc:
        svc.metrics.model_errors.labels(exc.code).inc()
        raise
    finally:
        svc.metrics.model_seconds.observe(time.perf_counter() - preprocessed)
    answered = time.perf_counter()
    probabilities = [round(float(p), 6) for p in np.asarray(result.probabilities)[0]]
    answer = Answer(
        id=new_timeuuid(),
        created_at=datetime.now(UTC),
        filename=upload.filename,
        image_sha256=pre.sha256,
        digit=int(np.asarray(result.digits)[0]),
        probabilities=probabilities,
        model_name=result.model_name,
        model_version=result.model_version,
        label=label,
        image=image,
        preprocess_ms=(preprocessed - started) * 1000,
        model_ms=(answered - preprocessed) * 1000,
        total_ms=(answered - started) * 1000,
    )
    record(svc, answer, upload)
    total = time.perf_counter() - started
    svc.metrics.predict_seconds.observe(total)
    svc.metrics.predictions.labels(answer.model_name, str(answer.model_version), str(answer.digit)).inc()
    if label is not None:
        svc.metrics.saw_model_version(answer.model_name, label, answer.model_version)
    add_log_fields(
        prediction_id=str(answer.id),
        digit=answer.digit,
        model=answer.model_name,
        model_version=answer.model_version,
        label=label,
        preprocess_ms=round(answer.preprocess_ms, 2),
        model_ms=round(answer.model_ms, 2),
    )
    return answer


def record(svc: Services, answer: Answer, upload: Upload) -> None:
    """Log the prediction durably before its answer leaves; the store ships it to Cassandra later.

    `store.record` raises `StoreUnavailable` (503, no id handed out) only when its local log is full or
    cannot be written. Building the record only fails on a bug (or a model server that does not say which
    version answered), and that must not cost the user their answer: it is logged loudly instead.
    """
    try:
        prediction = PredictionRecord(
            id=answer.id,
            created_at=answer.created_at,
            filename=answer.filename,
            image_sha256=answer.image_sha256,
            input_image=answer.image.tobytes(),
            digit=answer.digit,
            probabilities=answer.probabilities,
            model_name=answer.model_name,
            model_version=answer.model_version if answer.model_version is not None else 0,
            preprocess_ms=answer.preprocess_ms,
            model_ms=answer.model_ms,
            total_ms=answer.total_ms,
            client_addr=request.remote_addr,
        )
    except (TypeError, ValueError):
        log.exception("prediction %s NOT RECORDED: it does not make a valid record", answer.id)
        return
    try:
        svc.store.record(prediction)
    except StoreUnavailable:
        svc.metrics.wal_refused.inc()
        raise
    svc.metrics.spool_depth.set(svc.store.spool_depth())


@bp.post("/v1/predict")
def predict():
    label, version = model_choice(services.current().settings.model_label)
    upload = read_upload()
    answer = predict_upload(upload, label=label, version=version)
    return jsonify(answer.to_json())
