"""Concurrent predictions sharing Predict calls (gateway/batching.py), against a model double whose calls the
test holds open, so that which requests share a call is decided by the test, not by the scheduler."""

from __future__ import annotations

import dataclasses
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pytest

from gateway.batching import PredictBatcher
from gateway.errors import InvalidInput, ModelError, ModelUnavailable
from gateway.model_client import Prediction
from tests.waiting import eventually


class HeldModel:
    """Answers digit = the image's first pixel, version 7 (or the version asked for). Each call waits until
    the test releases it (`hold=False` answers at once); `fail` makes calls raise."""

    def __init__(self, *, hold: bool = True) -> None:
        self.hold = hold
        self.fail: Exception | None = None
        self.calls: list[tuple[int, str | None, int | None]] = []  # (batch size, label, version)
        self.started = threading.Semaphore(0)
        self._releases: list[threading.Event] = []
        self._lock = threading.Lock()

    def predict(self, images, *, label=None, version=None) -> Prediction:
        assert images.dtype == np.uint8 and images.shape[1:] == (28, 28)
        release = threading.Event()
        with self._lock:
            self.calls.append((len(images), label, version))
            self._releases.append(release)
        self.started.release()
        if self.hold:
            assert release.wait(30), "the test never released this call"
        if self.fail is not None:
            raise self.fail
        digits = images[:, 0, 0].astype(np.int64)
        probabilities = np.eye(10, dtype=np.float32)[digits]
        return Prediction(probabilities, digits, "mnist", version or 7)

    def release(self, call: int) -> None:
        with self._lock:
            self._releases[call].set()

    def release_all(self) -> None:
        with self._lock:
            for release in self._releases:
                release.set()


def image(digit: int) -> np.ndarray:
    picture = np.zeros((28, 28), dtype=np.uint8)
    picture[0, 0] = digit
    return picture


@pytest.fixture
def pool():
    with ThreadPoolExecutor(max_workers=40) as executor:
        yield executor


def batcher(model: HeldModel, *, lanes: int = 1, max_batch: int = 32, wait_s: float = 30) -> PredictBatcher:
    return PredictBatcher(model.predict, max_batch=max_batch, lanes=lanes, wait_s=wait_s)


def queued_behind_a_held_call(b: PredictBatcher, model: HeldModel, pool, digits, **target):
    """The first digit's request in a call the model holds, and the others' requests queued behind it."""
    first = pool.submit(b.predict, image(digits[0]), **target)
    assert model.started.acquire(timeout=10)
    rest = [pool.submit(b.predict, image(d), **target) for d in digits[1:]]
    eventually(lambda: b.waiting() == len(rest), what=f"{len(rest)} requests waiting")
    return first, rest


def test_a_lone_request_is_sent_at_once_in_a_call_of_its_own():
    model = HeldModel(hold=False)
    b = batcher(model)
    for digit in (4, 2, 9):
        answer = b.predict(image(digit))
        assert answer.digits.tolist() == [digit] and answer.probabilities.shape == (1, 10)
        assert answer.model_version == 7
    assert model.calls == [(1, None, None)] * 3


def test_requests_arriving_while_every_lane_is_busy_share_the_next_call(pool):
    model = HeldModel()
    b = batcher(model)
    first, rest = queued_behind_a_held_call(b, model, pool, range(1, 7), label="stable")
    model.release(0)
    assert model.started.acquire(timeout=10)  # the next call, with all five
    model.release(1)
    assert first.result(10).digits.tolist() == [1]
    assert [f.result(10).digits.tolist() for f in rest] == [[d] for d in range(2, 7)]  # each its own row
    assert model.calls == [(1, "stable", None), (5, "stable", None)]
    assert b.waiting() == 0


def test_a_call_takes_at_most_max_batch_images(pool):
    model = HeldModel()
    b = batcher(model, max_batch=3)
    first, rest = queued_behind_a_held_call(b, model, pool, range(8))
    futures = [first, *rest]
    model.release_all()
    for call in range(1, 4):
        assert model.started.acquire(timeout=10)
        model.release(call)
    assert [f.result(10).digits.tolist() for f in futures] == [[d] for d in range(8)]
    assert [size for size, _, _ in model.calls] == [1, 3, 3, 1]


def test_versions_never_share_a_call_and_each_has_its_own_lanes(pool):
    model = HeldModel()
    b = batcher(model)
    stable = pool.submit(b.predict, image(1), label="stable")
    assert model.started.acquire(timeout=10)
    pinned = pool.submit(b.predict, image(2), version=2)
    assert model.started.acquire(timeout=10)  # sent at once: stable's busy lane is not its own
    model.release_all()
    assert stable.result(10).model_version == 7 and pinned.result(10).model_version == 2
    assert sorted(model.calls, key=str) == sorted([(1, "stable", None), (1, None, 2)], key=str)


def test_a_failed_call_fails_each_member_with_its_own_error_and_the_lane_goes_on(pool):
    model = HeldModel()
    b = batcher(model)
    first, members = queued_behind_a_held_call(b, model, pool, range(1, 5))
    model.fail = ModelUnavailable("the model server is unreachable; try again shortly")
    model.release_all()
    assert model.started.acquire(timeout=10)
    model.release_all()
    errors = [f.exception(10) for f in [first, *members]]
    assert all(isinstance(e, ModelUnavailable) and "unreachable" in e.message for e in errors)
    assert len({id(e) for e in errors}) == 4  # raised in four threads: four instances
    model.fail, model.hold = None, False
    assert b.predict(image(8)).digits.tolist() == [8]  # nothing is left holding the lane


def test_with_two_lanes_a_stuck_call_holds_up_nobody(pool):
    model = HeldModel()
    b = batcher(model, lanes=2)
    stuck = pool.submit(b.predict, image(1))
    assert model.started.acquire(timeout=10)
    model.hold = False
    answers = [b.predict(image(d)).digits.tolist() for d in range(2, 8)]  # one after another, in lane two
    assert answers == [[d] for d in range(2, 8)]
    assert not stuck.done()
    model.release(0)
    assert stuck.result(10).digits.tolist() == [1]


def test_a_request_that_waits_too_long_for_a_lane_gives_up_and_leaves_the_queue(pool):
    model = HeldModel()
    b = batcher(model, wait_s=0.3)
    stuck = pool.submit(b.predict, image(1))
    assert model.started.acquire(timeout=10)
    with pytest.raises(ModelUnavailable, match="did not answer in time"):
        b.predict(image(2))
    assert b.waiting() == 0
    model.release(0)
    assert stuck.result(10).digits.tolist() == [1]
    assert model.calls == [(1, None, None)]  # the one that gave up was never sent


def test_max_batch_one_sends_every_request_alone_however_many_are_in_flight(pool):
    model = HeldModel()
    sizes: list[int] = []
    b = PredictBatcher(model.predict, max_batch=1, lanes=1, wait_s=30, observe_batch=sizes.append)
    futures: list[Future] = [pool.submit(b.predict, image(d)) for d in range(5)]
    for _ in futures:
        assert model.started.acquire(timeout=10)  # all five in flight at once
    model.release_all()
    assert sorted(f.result(10).digits.tolist()[0] for f in futures) == list(range(5))
    assert [size for size, _, _ in model.calls] == [1] * 5 and sizes == [1] * 5  # still counted


def test_settings_are_checked():
    with pytest.raises(ValueError):
        PredictBatcher(HeldModel().predict, max_batch=0, lanes=1, wait_s=1)
    with pytest.raises(ValueError):
        PredictBatcher(HeldModel().predict, max_batch=4, lanes=0, wait_s=1)


def test_an_answer_with_the_wrong_number_of_rows_fails_the_whole_call(pool):
    model = HeldModel()
    b = batcher(model)
    first, members = queued_behind_a_held_call(b, model, pool, (1, 2, 3))
    answer = model.predict  # the next call answers one row for its two images

    def one_row(images, **kwargs):
        full = answer(images, **kwargs)
        return Prediction(full.probabilities[:1], full.digits[:1], full.model_name, full.model_version)

    model.hold, b._predict = False, one_row
    model.release(0)
    assert first.result(10).digits.tolist() == [1]
    assert all(isinstance(f.exception(10), ModelError) for f in members)


def test_an_interrupted_call_gives_the_others_an_outage_and_frees_its_lane(pool):
    model = HeldModel()
    b = batcher(model)
    first, members = queued_behind_a_held_call(b, model, pool, (1, 2, 3))
    model.fail = KeyboardInterrupt()  # the leader of the next call is interrupted in it
    model.release_all()
    assert model.started.acquire(timeout=10)
    model.release_all()
    assert isinstance(first.exception(10), KeyboardInterrupt)
    outcomes = sorted(type(f.exception(10)).__name__ for f in members)
    assert outcomes == ["KeyboardInterrupt", "ModelUnavailable"]  # its leader, and the member it carried
    model.fail, model.hold = None, False
    assert b.predict(image(8)).digits.tolist() == [8]  # the lane was freed


class InterruptedWait(threading.Event):
    """A waiter's event whose timed wait is interrupted (as by an asynchronous exception)."""

    def wait(self, timeout=None):
        if timeout is not None:
            raise KeyboardInterrupt
        return super().wait(timeout)


def test_a_waiter_interrupted_in_the_queue_leaves_it_and_strands_nothing(pool, monkeypatch):
    import gateway.batching

    model = HeldModel()
    b = batcher(model)
    first = pool.submit(b.predict, image(1))
    assert model.started.acquire(timeout=10)

    @dataclasses.dataclass(eq=False)
    class Interrupted(gateway.batching._Waiter):
        woken: threading.Event = dataclasses.field(default_factory=InterruptedWait)

    monkeypatch.setattr(gateway.batching, "_Waiter", Interrupted)
    with pytest.raises(KeyboardInterrupt):
        b.predict(image(2))
    monkeypatch.undo()
    assert b.waiting() == 0
    model.release(0)
    assert first.result(10).digits.tolist() == [1]
    model.hold = False
    assert b.predict(image(3)).digits.tolist() == [3]
    assert [size for size, _, _ in model.calls] == [1, 1]  # the interrupted one was never sent


def test_an_image_that_is_not_a_uint8_28x28_is_refused_before_it_can_fail_a_batch():
    b = batcher(HeldModel(hold=False))
    for bad in (
        np.zeros((28, 28), np.float32),
        np.zeros((1, 28, 28), np.uint8),
        np.zeros((27, 28), np.uint8),
    ):
        with pytest.raises(InvalidInput, match="uint8 \\[28, 28\\]"):
            b.predict(bad)
