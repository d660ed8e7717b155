"""The OpenAPI 3.1 description of the gateway's whole HTTP API, served at `/openapi.json`.

Kept in code beside the routes; tests check it is a valid OpenAPI 3.1 document, that its paths are exactly the
app's routes, and validate real answers against its schemas.
"""

from __future__ import annotations

from functools import cache

from gateway import __version__


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str, *, retry_after: bool = False) -> dict:
    response = _json(_ref("Error"), description)
    if retry_after:
        response["headers"] = {
            "Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}
        }
    return response


_ID_PARAM = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": "prediction id (a time UUID)",
    "schema": {"type": "string", "format": "uuid"},
}
_MODEL_PARAMS = [
    {
        "name": "label",
        "in": "query",
        "required": False,
        "description": "version label to ask (default: the gateway's MODEL_LABEL, usually `stable`)",
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"},
    },
    {
        "name": "version",
        "in": "query",
        "required": False,
        "description": "exact model version to ask (instead of a label)",
        "schema": {"type": "integer", "minimum": 1},
    },
]
_UPLOAD_BODY = {
    "required": True,
    "description": "an image (PNG, JPEG, GIF, BMP, TIFF, WebP) in multipart field `image` (or `pic`), "
    "or as the whole body",
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    "image": {"type": "string", "format": "binary"},
                    "pic": {"type": "string", "format": "binary"},
                },
            }
        },
        "image/*": {"schema": {"type": "string", "format": "binary"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}
_RATE_LIMITED = _error(
    "this client sent more write requests than `GATEWAY_RATE_LIMIT` allows; retry after `Retry-After` s",
    retry_after=True,
)
_UPLOAD_ERRORS = {
    "400": _error("the upload is missing, empty, corrupt or a parameter is wrong"),
    "404": _error("the label or version asked for is not served"),
    "413": _error(
        "the body, the decoded image's pixels or the memory or CPU time decoding it takes is over its limit"
    ),
    "415": _error("the upload is not an image format the gateway reads"),
    "429": _RATE_LIMITED,
    "502": _error("the model server rejected the request (a contract problem, not the client's)"),
    "503": _error(
        "the model server is unavailable, or the gateway is busy decoding other large pictures; retry after "
        "`Retry-After` seconds",
        retry_after=True,
    ),
}

SCHEMAS: dict[str, dict] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            }
        },
    },
    "Probabilities": {
        "type": "array",
        "items": {"type": "number", "minimum": 0, "maximum": 1},
        "minItems": 10,
        "maxItems": 10,
        "description": "softmax output, index = digit",
    },
    "Input": {
        "type": "object",
        "description": "the 28x28 MNIST-style image the model saw (white digit on black)",
        "required": ["width", "height", "png_base64"],
        "properties": {
            "width": {"const": 28},
            "height": {"const": 28},
            "png_base64": {"type": "string", "contentEncoding": "base64", "contentMediaType": "image/png"},
        },
    },
    "Timings": {
        "type": "object",
        "required": ["preprocess", "model", "total"],
        "properties": {
            "preprocess": {"type": ["number", "null"], "description": "ms to decode and preprocess"},
            "model": {"type": ["number", "null"], "description": "ms of the gRPC Predict call"},
            "total": {"type": ["number", "null"], "description": "ms for the whole prediction"},
        },
    },
    "Prediction": {
        "type": "object",
        "required": ["id", "created_at", "digit", "probabilities", "model", "timings_ms", "input"],
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "created_at": {"type": "string", "format": "date-time"},
            "filename": {"type": ["string", "null"], "description": "the client's file name, as data"},
            "digit": {"type": "integer", "minimum": 0, "maximum": 9},
            "probabilities": _ref("Probabilities"),
            "model": {
                "type": "object",
                "required": ["name", "version"],
                "description": "the model and version that actually answered",
                "properties": {
                    "name": {"type": "string"},
                    "version": {"type": ["integer", "null"]},
                    "label": {"type": ["string", "null"]},
                },
            },
            "timings_ms": _ref("Timings"),
            "input": _ref("Input"),
        },
    },
    "PredictionRecord": {
        "type": "object",
        "required": ["id", "created_at", "digit", "probabilities", "model"],
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "created_at": {"type": "string", "format": "date-time"},
            "filename": {"type": ["string", "null"]},
            "digit": {"type": "integer", "minimum": 0, "maximum": 9},
            "probabilities": _ref("Probabilities"),
            "model": {
                "type": "object",
                "required": ["name", "version"],
                "properties": {"name": {"type": "string"}, "version": {"type": ["integer", "null"]}},
            },
            "timings_ms": _ref("Timings"),
            "feedback": {
                "type": ["integer", "null"],
                "minimum": 0,
                "maximum": 9,
                "description": "true label",
            },
            "input": _ref("Input"),
        },
    },
    "PredictionPage": {
        "type": "object",
        "required": ["items", "next_cursor"],
        "properties": {
            "items": {"type": "array", "items": _ref("PredictionRecord")},
            "next_cursor": {"type": ["string", "null"], "description": "pass as `cursor` for the next page"},
        },
    },
    "Feedback": {
        "type": "object",
        "required": ["label"],
        "properties": {"label": {"type": "integer", "minimum": 0, "maximum": 9}},
    },
    "FeedbackAck": {
        "type": "object",
        "required": ["id", "label"],
        "properties": {"id": {"type": "string", "format": "uuid"}, "label": {"type": "integer"}},
    },
    "Health": {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}},
    "Ready": {
        "type": "object",
        "required": ["status", "checks"],
        "properties": {
            "status": {"enum": ["ready", "not_ready"]},
            "checks": {
                "type": "object",
                "additionalProperties": {
                    "type": "object",
                    "required": ["ok"],
                    "properties": {"ok": {"type": "boolean"}, "detail": {"type": ["string", "null"]}},
                },
            },
        },
    },
}


@cache
def openapi_spec() -> dict:
    bearer = [{"opsToken": []}]
    paths = {
        "/v1/predict": {
            "post": {
                "operationId": "predict",
                "summary": "Classify an uploaded image of a digit",
                "parameters": _MODEL_PARAMS,
                "requestBody": _UPLOAD_BODY,
                "responses": {"200": _json(_ref("Prediction"), "the model's answer"), **_UPLOAD_ERRORS},
            }
        },
        "/v1/predictions": {
            "get": {
                "operationId": "listPredictions",
                "summary": "Recent predictions, newest first",
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
                    },
                    {
                        "name": "cursor",
                        "in": "query",
                        "required": False,
                        "description": "opaque `next_cursor` of the previous page (a page may come back "
                        "short, even empty, with a `next_cursor`: keep following it until it is null)",
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "200": _json(_ref("PredictionPage"), "a page of predictions"),
                    "400": _error("a bad `limit` or `cursor`"),
                    "503": _error("Cassandra is unavailable", retry_after=True),
                },
            }
        },
        "/v1/predictions/{id}": {
            "get": {
                "operationId": "getPrediction",
                "summary": "One recorded prediction, with the 28x28 input the model saw",
                "parameters": [_ID_PARAM],
                "responses": {
                    "200": _json(_ref("PredictionRecord"), "the prediction"),
                    "400": _error("not a prediction id"),
                    "404": _error("no such prediction (yet)"),
                    "503": _error("Cassandra is unavailable", retry_after=True),
                },
            }
        },
        "/v1/predictions/{id}/feedback": {
            "post": {
                "operationId": "addFeedback",
                "summary": "Record the true digit of a prediction",
                "description": "The first label wins: the same label again is a 200, a different one a 409. "
                "With the ops token (`Authorization: Bearer <OPS_TOKEN>`) an operator replaces the label.",
                "parameters": [_ID_PARAM],
                "security": [{}, {"opsToken": []}],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("Feedback")}},
                },
                "responses": {
                    "200": _json(_ref("FeedbackAck"), "recorded"),
                    "400": _error("not a prediction id, or the label is not 0-9"),
                    "401": _error("an Authorization header without the right ops token"),
                    "403": _error("an Authorization header while operator access is disabled (no OPS_TOKEN)"),
                    "404": _error("no such prediction"),
                    "409": _error("the prediction already has another label (only an operator changes it)"),
                    "429": _RATE_LIMITED,
                    "503": _error("Cassandra is unavailable", retry_after=True),
                },
            }
        },
        "/mnist": {
            "post": {
                "operationId": "legacyMnist",
                "summary": "The original upload form: multipart field `pic`, plain-text answer",
                "parameters": _MODEL_PARAMS,
                "requestBody": {
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "required": ["pic"],
                                "properties": {"pic": {"type": "string", "format": "binary"}},
                            }
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "`Filename: ...`, `Pred: ...`, `UpdateTime: ...` lines",
                        "headers": {
                            "X-Prediction-ID": {
                                "description": "the prediction id",
                                "schema": {"type": "string"},
                            }
                        },
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_UPLOAD_ERRORS,
                },
            }
        },
        "/": {
            "get": {
                "operationId": "webPage",
                "summary": "The web page: upload or draw a digit",
                "responses": {
                    "200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}
                },
            }
        },
        "/static/{filename}": {
            "get": {
                "operationId": "webAsset",
                "summary": "The page's scripts, styles and icons",
                "parameters": [
                    {"name": "filename", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {"200": {"description": "the file"}, "404": _error("no such file")},
            }
        },
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "Liveness: the process answers",
                "responses": {"200": _json(_ref("Health"), "alive")},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "Readiness: the model is AVAILABLE for the configured label and Cassandra answers",
                "responses": {
                    "200": _json(_ref("Ready"), "ready"),
                    "503": {**_json(_ref("Ready"), "not ready, with the failing checks")},
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {
                        "description": "text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")},
            }
        },
        "/ops/spool/replay": {
            "post": {
                "operationId": "replaySpool",
                "summary": "Replay the local spool into Cassandra now",
                "security": bearer,
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "replayed": {"type": "integer"},
                                "spool_depth": {"type": "integer"},
                            },
                        },
                        "done",
                    ),
                    "401": _error("missing or wrong token"),
                    "403": _error("ops endpoints disabled (no OPS_TOKEN)"),
                    "503": _error("Cassandra is unavailable", retry_after=True),
                },
            }
        },
        "/ops/log-level": {
            "post": {
                "operationId": "setLogLevel",
                "summary": "Change the log level of the worker that answers",
                "security": bearer,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["level"],
                                "properties": {"level": {"enum": ["DEBUG", "INFO", "WARNING", "ERROR"]}},
                            }
                        }
                    },
                },
                "responses": {
                    "200": _json({"type": "object", "properties": {"level": {"type": "string"}}}, "changed"),
                    "400": _error("not a log level"),
                    "401": _error("missing or wrong token"),
                    "403": _error("ops endpoints disabled (no OPS_TOKEN)"),
                },
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "mnist-stack gateway",
            "version": __version__,
            "description": "Upload a picture of a digit, get the model's answer; every prediction is "
            'logged to Cassandra. Errors are `{"error": {"code", "message"}}` with the HTTP status; '
            "every answer carries `X-Request-ID`.",
        },
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"opsToken": {"type": "http", "scheme": "bearer", "description": "OPS_TOKEN"}},
        },
    }
