"""What the store keeps about one prediction, and its write-ahead log encoding (JSON: readable with `jq`)."""

from __future__ import annotations

import base64
import functools
import ipaddress
import json
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime

from gateway.store.stats import ROUTING_REASONS

INPUT_BYTES = 28 * 28


@dataclass(frozen=True)
class PredictionRecord:
    """One prediction. `id` is a version-1 (time) UUID: its timestamp decides the day bucket and the order.

    `filename` is the client's name for the upload, kept as data. `input_image` is the 28x28 uint8 input the
    model saw (784 bytes, row-major). `client_addr` that is not an IP address is stored as null.
    `routing` says why this version answered (gateway/store/stats.py ROUTING_REASONS; null on records logged
    before rollouts existed); `request_id`, on a `shadow` record, is the id of the prediction the user got.
    `feedback_label` is filled on reads only.
    """

    id: uuid.UUID
    created_at: datetime
    filename: str | None
    image_sha256: str
    input_image: bytes
    digit: int
    probabilities: Sequence[float]
    model_name: str
    model_version: int
    preprocess_ms: float | None = None
    model_ms: float | None = None
    total_ms: float | None = None
    client_addr: str | None = None
    routing: str | None = None
    request_id: uuid.UUID | None = None
    feedback_label: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.id, uuid.UUID) or self.id.version != 1:
            raise ValueError("a prediction id is a version-1 (time) UUID")
        if len(self.input_image) not in (INPUT_BYTES, 0):  # empty: a list read that leaves the input out
            raise ValueError(
                f"input_image must be {INPUT_BYTES} bytes (28x28 uint8), got {len(self.input_image)}"
            )
        if not 0 <= int(self.digit) <= 9:
            raise ValueError(f"digit must be 0-9, got {self.digit}")
        probabilities = tuple(map(float, self.probabilities))
        if len(probabilities) != 10 or not all(map(math.isfinite, probabilities)):
            raise ValueError("probabilities must be 10 finite numbers")
        set_ = object.__setattr__  # frozen: normalise types once, here
        set_(self, "probabilities", probabilities)
        set_(self, "digit", int(self.digit))
        set_(self, "model_version", int(self.model_version))
        set_(self, "input_image", bytes(self.input_image))
        created = self.created_at
        set_(
            self,
            "created_at",
            created.replace(tzinfo=UTC) if created.tzinfo is None else created.astimezone(UTC),
        )
        for name in ("preprocess_ms", "model_ms", "total_ms"):
            value = getattr(self, name)
            set_(self, name, None if value is None else float(value))
        set_(self, "client_addr", _ip_or_none(self.client_addr))
        if self.routing is not None and self.routing not in ROUTING_REASONS:
            raise ValueError(f"routing must be one of {', '.join(ROUTING_REASONS)}, got {self.routing!r}")
        if self.request_id is not None and not isinstance(self.request_id, uuid.UUID):
            raise ValueError("request_id is a UUID")

    def to_json_bytes(self) -> bytes:
        # Field by field, not `dataclasses.asdict` (which deep-copies every value): this runs on the request
        # path, once per prediction.
        data = {name: getattr(self, name) for name in _LOGGED_FIELDS}
        data["id"] = str(self.id)
        data["created_at"] = self.created_at.isoformat()
        data["input_image"] = base64.b64encode(self.input_image).decode("ascii")
        data["probabilities"] = list(self.probabilities)
        data["request_id"] = None if self.request_id is None else str(self.request_id)
        return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_json_bytes(cls, raw: bytes) -> PredictionRecord:
        data = json.loads(raw.decode("utf-8"))
        data["id"] = uuid.UUID(data["id"])
        data["created_at"] = datetime.fromisoformat(data["created_at"])
        data["input_image"] = base64.b64decode(data["input_image"])
        if data.get("request_id") is not None:  # absent from records logged before rollouts existed
            data["request_id"] = uuid.UUID(data["request_id"])
        return cls(**data)


_LOGGED_FIELDS = tuple(f.name for f in fields(PredictionRecord) if f.name != "feedback_label")


@functools.lru_cache(maxsize=4096)  # parsed twice per prediction (logged, shipped); clients come back
def _ip_or_none(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None
