"""The gateway's rollout and scorecard API, as `mnist-models rollout` and `scorecard` use it.

Plain HTTP with the standard library (the CLI starts in a tenth of a second; no client library needed for
three JSON calls). Every call has a deadline. Failures become ops errors with their own exit codes: a 409
`conflict` is a RolloutConflict (someone else changed the rollout), anything else a GatewayError.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote, urlencode

from serving.ops.errors import GatewayError, RolloutConflict

MAX_ANSWER_BYTES = 4 * 1024 * 1024  # a scorecard of a few versions is tens of KiB; more is not our gateway


class GatewayClient:
    def __init__(self, base_url: str, *, token: str = "", timeout_s: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s

    # -- the calls --

    def rollout(self, model: str) -> dict[str, Any]:
        """The stored state, its `effective` split and the last events (no token needed)."""
        return self._call("GET", f"/v1/models/{quote(model, safe='')}/rollout")

    def put_rollout(
        self,
        model: str,
        state: dict[str, Any],
        *,
        if_updated_at: str | None,
        event: dict[str, Any] | None,
    ) -> dict[str, Any]:
        """Write the whole state if the stored `updated_at` is still `if_updated_at` (null: no running
        rollout); a RolloutConflict otherwise. `event` is appended to the rollout's history."""
        if not self.token:
            raise GatewayError("changing a rollout needs the gateway's ops token: set OPS_TOKEN")
        body = {**state, "if_updated_at": if_updated_at, "event": event}
        return self._call("PUT", f"/v1/models/{quote(model, safe='')}/rollout", body)

    def scorecard(self, model: str, *, window_s: int | None = None) -> dict[str, Any]:
        query = f"?{urlencode({'window': window_s})}" if window_s is not None else ""
        return self._call("GET", f"/v1/models/{quote(model, safe='')}/scorecard{query}")

    # -- HTTP --

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        url = self.base_url + path
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token and method != "GET":
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return _json_object(response.read(MAX_ANSWER_BYTES + 1), f"{method} {url}")
        except urllib.error.HTTPError as error:
            raise _http_error(method, url, error) from None
        except TimeoutError:
            raise GatewayError(
                f"gateway {self.base_url} did not answer {method} {path} within {self.timeout_s:g}s"
            ) from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            if isinstance(reason, TimeoutError):
                raise GatewayError(
                    f"gateway {self.base_url} did not answer {method} {path} within {self.timeout_s:g}s"
                ) from None
            raise GatewayError(f"gateway {self.base_url} unreachable ({method} {path}: {reason})") from None


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    if len(raw) > MAX_ANSWER_BYTES:
        raise GatewayError(f"{what}: answer larger than {MAX_ANSWER_BYTES} bytes")
    try:
        value = json.loads(raw)
    except ValueError:
        raise GatewayError(f"{what}: answer is not JSON: {raw[:80]!r}") from None
    if not isinstance(value, dict):
        raise GatewayError(f"{what}: answer is not a JSON object")
    return value


def _http_error(method: str, url: str, error: urllib.error.HTTPError) -> Exception:
    """The gateway's `{"error": {"code", "message"}}` as one line; 409 conflict is its own kind."""
    try:
        raw = error.read(64 * 1024)
    except OSError:
        raw = b""
    code, message = "", raw[:200].decode(errors="replace").strip()
    try:
        detail = json.loads(raw)["error"]
        code, message = str(detail.get("code", "")), str(detail.get("message", ""))
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    text = f"{method} {url}: {error.code} {code or error.reason}" + (f": {message}" if message else "")
    if error.code == 409:
        return RolloutConflict(text)
    if error.code in (401, 403):
        return GatewayError(f"{text} (check OPS_TOKEN)")
    return GatewayError(text)
