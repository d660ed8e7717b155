"""`POST /mnist`: the original project's upload flow, kept for its users and scripts.

A form posting the file in field `pic` (`curl -F pic=@digit.png http://host:8080/mnist`) gets plain text:
`Filename: ...`, `Pred: ...`, `UpdateTime: ...`. Unlike the original, nothing is written under the client's
file name, the model is not reloaded per request and the prediction goes to Cassandra through the shared
store.
Errors are the same JSON as the v1 API.
"""

from __future__ import annotations

import re

from flask import Blueprint, Response

from gateway.routes.predict import predict_request

bp = Blueprint("legacy", __name__)

# C0, DEL, C1 and Unicode's line and paragraph separators: everything `str.splitlines` ends a line at.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


@bp.post("/mnist")
def mnist() -> Response:
    answer = predict_request(("pic", "image"))
    # The name is echoed as data: control characters would forge extra lines of this text format.
    filename = _CONTROL.sub("?", answer.filename or "")
    text = (
        f"Filename: {filename}\n"
        f"Pred: {answer.digit}\n"
        f"UpdateTime: {answer.created_at.strftime('%Y-%m-%d %H:%M:%S')} UTC\n"
    )
    response = Response(text, content_type="text/plain; charset=utf-8")
    response.headers["X-Prediction-ID"] = str(answer.id)
    return response
