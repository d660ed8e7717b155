"""The prediction flow, free of HTTP: an upload in, the model's answer out, recorded on the way.

Preprocess the upload into the 28x28 MNIST-style input, route it (gateway/rollout.py: the pinned label or
version, else stable or the rollout's canary), ask the model server, record the prediction through the store
(never waiting on Cassandra), hand a shadow copy to the other version when the rollout says so, answer.
The routes (`/v1/predict`, `/mnist`) only parse HTTP and shape the answer.
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

from gateway.errors import (
    GatewayError,
    ImageTooLarge,
    ModelUnavailable,
    ModelVersionNotFound,
    StoreUnavailable,
)
from gateway.logs import add_log_fields
from gateway.model_client import Prediction
from gateway.preprocess import to_mnist
from gateway.rollout import Route, Target, route
from gateway.services import Services
from gateway.store import PredictionRecord, stats

log = logging.getLogger("gateway.predict")


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
    routing: str  # why this version answered: stable, canary, pinned (shadow answers are never sent)
    image: np.ndarray  # uint8 [28, 28], what the model saw
    preprocess_ms: float
    model_ms: float
    total_ms: float

    @classmethod
    def of(
        cls,
        result: Prediction,
        *,
        filename: str | None,
        image_sha256: str,
        label: str | None,
        routing: str,
        image: np.ndarray,
        preprocess_ms: float,
        model_ms: float,
    ) -> Answer:
        """The model server's answer to one image as a new prediction: a fresh time UUID, stamped now."""
        return cls(
            id=new_timeuuid(),
            created_at=datetime.now(UTC),
            filename=filename,
            image_sha256=image_sha256,
            digit=int(np.asarray(result.digits)[0]),
            probabilities=[round(float(p), 6) for p in np.asarray(result.probabilities)[0]],
            model_name=result.model_name,
            model_version=result.model_version,
            label=label,
            routing=routing,
            image=image,
            preprocess_ms=preprocess_ms,
            model_ms=model_ms,
            total_ms=preprocess_ms + model_ms,
        )

    def to_json(self, *, with_input: bool = False) -> dict:
        """The answer's JSON; `with_input` adds the 28x28 PNG the model saw (the web page shows it)."""
        body = {
            "id": str(self.id),
            "created_at": self.created_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "filename": self.filename,
            "digit": self.digit,
            "probabilities": self.probabilities,
            "model": {
                "name": self.model_name,
                "version": self.model_version,
                "label": self.label,
                "routing": self.routing,
            },
            "timings_ms": {
                "preprocess": round(self.preprocess_ms, 3),
                "model": round(self.model_ms, 3),
                "total": round(self.total_ms, 3),
            },
        }
        if with_input:
            body["input"] = {"width": 28, "height": 28, "png_base64": png_base64(self.image)}
        return body


@dataclass(frozen=True)
class ShadowCopy:
    """A user's request for the other version to answer off the request path (gateway/shadow.py)."""

    target: Target
    answer: Answer  # what the user got
    client_addr: str | None


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


def predict(
    svc: Services, upload: Upload, *, pinned: Target | None, client_key: str, client_addr: str | None
) -> Answer:
    """Answer one upload. `pinned`: the label or version the client named (None: the rollout decides);
    `client_key`: what keeps a client on one side of the split (X-Client-Id, else its address)."""
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
    stable = Target(label=svc.settings.model_label)
    model = svc.settings.model_name
    state = None if pinned is not None else svc.rollouts.get(model)
    chosen = route(client_key, model, state, datetime.now(UTC), stable=stable, pinned=pinned)
    try:
        result = _ask(svc, image, chosen)
    except GatewayError:
        if chosen.reason != "canary":
            raise
        # The canary failed this user: they get stable's answer. The canary's failure counts against it, and
        # stable's, if it fails too (an outage), against the rollout's stable version as any stable request's.
        chosen = Route(stable, "stable", state.stable_version)
        result = _ask(svc, image, chosen)
    finally:
        svc.metrics.model_seconds.observe(time.perf_counter() - preprocessed)
    answer = Answer.of(
        result,
        filename=upload.filename,
        image_sha256=pre.sha256,
        label=chosen.target.label,
        routing=chosen.reason,
        image=image,
        preprocess_ms=(preprocessed - started) * 1000,
        model_ms=(time.perf_counter() - preprocessed) * 1000,
    )
    record(svc, _record_of(answer, image, client_addr, routing=chosen.reason))
    if chosen.shadow is not None:
        svc.shadow.submit(ShadowCopy(chosen.shadow, answer, client_addr))
    total = time.perf_counter() - started
    svc.metrics.predict_seconds.observe(total)
    svc.metrics.predictions.labels(answer.model_name, str(answer.model_version), str(answer.digit)).inc()
    if answer.label is not None:
        svc.metrics.saw_model_version(answer.model_name, answer.label, answer.model_version)
    add_log_fields(
        prediction_id=str(answer.id),
        digit=answer.digit,
        model=answer.model_name,
        model_version=answer.model_version,
        label=answer.label,
        routing=answer.routing,
        preprocess_ms=round(answer.preprocess_ms, 2),
        model_ms=round(answer.model_ms, 2),
    )
    return answer


def _ask(svc: Services, image: np.ndarray, chosen: Route):
    """The model server's answer for the route's target; a failure of a version the rollout names is counted
    in its version_stats `errors` (through the store's shipper, not here)."""
    target = chosen.target
    try:
        return svc.predictor.predict(image, label=target.label, version=target.version)
    except ModelVersionNotFound as exc:
        svc.metrics.model_errors.labels(exc.code).inc()
        _count_error(svc, chosen)
        if target.version is None and target.label == svc.settings.model_label:
            # The configured label itself is missing (not loaded yet, or mis-set): nobody can be answered,
            # so it is an outage to retry later, not the client's mistake.
            raise ModelUnavailable(exc.message) from None
        raise ModelVersionNotFound(f"{exc.message}; omit it for the default") from None
    except GatewayError as exc:
        svc.metrics.model_errors.labels(exc.code).inc()
        _count_error(svc, chosen)
        raise


def _count_error(svc: Services, chosen: Route) -> None:
    if chosen.expected_version is None:
        return
    minute = stats.minute_of(datetime.now(UTC))
    svc.store.add_counts({(svc.settings.model_name, chosen.expected_version, minute, stats.ERRORS): 1})


def _record_of(
    answer: Answer,
    image: np.ndarray,
    client_addr: str | None,
    *,
    routing: str,
    request_id: uuid.UUID | None = None,
) -> PredictionRecord | None:
    """The answer as a record. Building it only fails on a bug (or a model server that does not say which
    version answered), and that must not cost the user their answer: it is logged loudly instead."""
    try:
        return PredictionRecord(
            id=answer.id,
            created_at=answer.created_at,
            filename=answer.filename,
            image_sha256=answer.image_sha256,
            input_image=image.tobytes(),
            digit=answer.digit,
            probabilities=answer.probabilities,
            model_name=answer.model_name,
            model_version=answer.model_version if answer.model_version is not None else 0,
            preprocess_ms=answer.preprocess_ms,
            model_ms=answer.model_ms,
            total_ms=answer.total_ms,
            client_addr=client_addr,
            routing=routing,
            request_id=request_id,
        )
    except (TypeError, ValueError):
        log.exception("prediction %s NOT RECORDED: it does not make a valid record", answer.id)
        return None


def record(svc: Services, prediction: PredictionRecord | None) -> None:
    """Log the prediction durably before its answer leaves; the store ships it to Cassandra later.

    `store.record` raises `StoreUnavailable` (503, no id handed out) only when its local log is full or
    cannot be written."""
    if prediction is None:
        return
    try:
        svc.store.record(prediction)
    except StoreUnavailable:
        svc.metrics.wal_refused.inc()
        raise
    svc.metrics.spool_depth.set(svc.store.spool_depth())


def answer_shadow(svc: Services, copy: ShadowCopy) -> None:
    """The other version answers a user's input (on the shadow worker): its record links to the user's
    prediction (`request_id`), and the pair counts `compared`/`agreed` on both versions."""
    user = copy.answer
    started = time.perf_counter()
    target = copy.target
    result = svc.model_client.predict(user.image[np.newaxis], label=target.label, version=target.version)
    model_ms = (time.perf_counter() - started) * 1000
    shadow = Answer.of(
        result,
        filename=user.filename,
        image_sha256=user.image_sha256,
        label=target.label,
        routing="shadow",
        image=user.image,
        preprocess_ms=user.preprocess_ms,
        model_ms=model_ms,
    )
    record(svc, _record_of(shadow, user.image, copy.client_addr, routing="shadow", request_id=user.id))
    if (
        user.model_version is None
        or shadow.model_version is None
        or user.model_version == shadow.model_version
    ):
        return  # nothing to compare (the same version answered both)
    minute = stats.minute_of(user.created_at)
    same = int(user.digit == shadow.digit)
    model = user.model_name
    svc.store.add_counts(
        {
            (model, user.model_version, minute, stats.compared(shadow.model_version)): 1,
            (model, user.model_version, minute, stats.agreed(shadow.model_version)): same,
            (model, shadow.model_version, minute, stats.compared(user.model_version)): 1,
            (model, shadow.model_version, minute, stats.agreed(user.model_version)): same,
        }
    )
