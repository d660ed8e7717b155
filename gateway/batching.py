"""Concurrent predictions for the same model version share gRPC Predict calls.

Each target (label or version) has `lanes` calls that may be in flight at once. A request that finds a lane
free sends its image at once, so a lone request waits for nothing. Requests that arrive while every lane is
busy queue up; when a call returns, the first of them sends the whole queue (up to `max_batch` images) as
one batch in the lane just freed. Batches therefore form by themselves under load, without a timer: the model
server's cost per image and the gRPC client's cost per call are shared by the batch. More than one lane keeps
one slow call (a stalled connection, a replica dying) from holding up every request behind it.

No thread of its own: the caller whose turn it is makes the call, then hands its lane to the next waiter.
The shadow worker calls the model client directly, so a slow other version never holds a user's lane.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from gateway.errors import InvalidInput, ModelError, ModelUnavailable
from gateway.model_client import IMAGE_SHAPE, Prediction

Target = tuple[str | None, int | None]  # (label, version)


@dataclass(eq=False)
class _Waiter:
    image: np.ndarray  # uint8 [28, 28]
    woken: threading.Event = field(default_factory=threading.Event)  # given a lane, or answered
    leads: bool = False  # was given a lane: sends itself and the queue
    result: Prediction | None = None
    error: BaseException | None = None


class PredictBatcher:
    """Wraps `predict(images, label=, version=)` (ModelClient.predict) for one image at a time."""

    def __init__(
        self,
        predict: Callable[..., Prediction],
        *,
        max_batch: int,
        lanes: int,
        wait_s: float,
        observe_batch: Callable[[int], None] = lambda size: None,
    ) -> None:
        """`wait_s` bounds how long a queued request waits for a lane or its answer; `observe_batch(size)`
        sees the batch size of every call."""
        if max_batch < 1 or lanes < 1 or wait_s <= 0:
            raise ValueError("max_batch and lanes must be >= 1, wait_s > 0")
        self._predict = predict
        self.max_batch = max_batch
        self.lanes = lanes
        self.wait_s = wait_s
        self._observe_batch = observe_batch
        self._lock = threading.Lock()
        self._in_flight: dict[Target, int] = {}  # lanes taken
        self._queues: dict[Target, list[_Waiter]] = {}  # waiting for a lane: only while all are taken

    def predict(
        self, image: np.ndarray, *, label: str | None = None, version: int | None = None
    ) -> Prediction:
        """The answer for one uint8 [28, 28] image: its row of the call it shared."""
        if self.max_batch == 1:  # sharing off: every request its own call
            self._observe_batch(1)
            return self._predict(image[np.newaxis], label=label, version=version)
        if image.dtype != np.uint8 or image.shape != IMAGE_SHAPE:  # else one bad image would fail its batch
            raise InvalidInput(f"the model input must be a uint8 [28, 28] image, not {list(image.shape)}")
        target = (label, version)
        me = _Waiter(image)
        with self._lock:
            if self._in_flight.get(target, 0) < self.lanes:
                self._in_flight[target] = self._in_flight.get(target, 0) + 1
                me.leads = True
            else:
                self._queues.setdefault(target, []).append(me)
        if not me.leads:
            self._wait_turn(target, me)
        if me.leads:
            self._send(target, me)
        if me.error is not None:
            raise copy.copy(me.error)  # one instance per thread: a raised exception carries its traceback
        assert me.result is not None
        return me.result

    def waiting(self) -> int:
        """Requests waiting for a lane, over all targets."""
        with self._lock:
            return sum(len(queue) for queue in self._queues.values())

    def _wait_turn(self, target: Target, me: _Waiter) -> None:
        """Until `me` holds a lane or has its answer. Still queued after wait_s, it leaves the queue;
        interrupted (any exception), it leaves it too, or passes on a lane handed to it meanwhile: nothing is
        stranded."""
        try:
            if me.woken.wait(self.wait_s):
                return
            with self._lock:
                queue = self._queues.get(target, [])
                if me in queue:  # neither a lane nor a call yet: leave (nobody answers for it)
                    queue.remove(me)
                    raise ModelUnavailable("the model server did not answer in time; try again shortly")
            me.woken.wait()  # given a lane or taken into a call meanwhile: that call's deadline bounds it
        except ModelUnavailable:
            raise
        except BaseException:
            with self._lock:
                queue = self._queues.get(target, [])
                if me in queue:
                    queue.remove(me)
                elif me.leads:
                    self._pass_lane(target)
            raise

    def _send(self, target: Target, me: _Waiter) -> None:
        """With a lane: send `me` and what waits (up to max_batch), answer each, pass the lane on."""
        batch = [me]
        try:
            with self._lock:
                queue = self._queues.get(target, [])
                batch += queue[: self.max_batch - 1]
                del queue[: self.max_batch - 1]
            self._observe_batch(len(batch))
            result = self._predict(np.stack([w.image for w in batch]), label=target[0], version=target[1])
            if len(result.digits) != len(batch) or len(result.probabilities) != len(batch):
                raise ModelError(f"the model answered {len(result.digits)} rows for {len(batch)} images")
        except Exception as exc:  # every member gets the failure, as if it had called alone
            for waiter in batch:
                waiter.error = exc
        except BaseException:  # the caller's own interruption: the others get an outage, not a hang
            for waiter in batch[1:]:
                waiter.error = ModelUnavailable("the model server call was interrupted; try again shortly")
            raise
        else:
            for row, waiter in enumerate(batch):
                waiter.result = Prediction(
                    probabilities=result.probabilities[row : row + 1],
                    digits=result.digits[row : row + 1],
                    model_name=result.model_name,
                    model_version=result.model_version,
                )
        finally:
            with self._lock:
                self._pass_lane(target)
            for waiter in batch[1:]:
                waiter.woken.set()

    def _pass_lane(self, target: Target) -> None:
        """Under the lock: the lane goes to the first waiter, or is freed."""
        queue = self._queues.get(target)
        if queue:
            following = queue.pop(0)
            following.leads = True
            following.woken.set()
        else:
            self._queues.pop(target, None)
            self._in_flight[target] -= 1
            if not self._in_flight[target]:
                del self._in_flight[target]
