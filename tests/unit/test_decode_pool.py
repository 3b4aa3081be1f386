"""The decode threads take one image from each waiting request in turn: a small request behind a
large one waits for one of its images, not all of them. Futures behave as a ThreadPoolExecutor's."""

from __future__ import annotations

import threading

import pytest

from service.decode_pool import DecodePool


@pytest.fixture
def pool():
    pool = DecodePool(1)
    yield pool
    pool.close()


def held(pool: DecodePool) -> threading.Event:
    """The pool's one thread busy until the returned event is set, so what is submitted now queues."""
    release, running = threading.Event(), threading.Event()
    pool.submit(lambda: (running.set(), release.wait(30)))
    assert running.wait(10)
    return release


def test_a_small_request_behind_a_large_one_goes_second_not_last(pool):
    order: list[str] = []
    release = held(pool)
    large = pool.submit_request([(order.append, (f"large {k}",)) for k in range(6)])
    small = pool.submit_request([(order.append, ("small 0",))])
    other = pool.submit_request([(order.append, (f"other {k}",)) for k in range(2)])
    release.set()
    for future in large + small + other:
        future.result(10)
    assert order == ["large 0", "small 0", "other 0", "large 1", "other 1", "large 2", "large 3", "large 4", "large 5"]


def test_results_exceptions_and_cancellation_are_a_futures(pool):
    release = held(pool)
    ok, failing, dropped = pool.submit_request([(lambda x: x * 2, (21,)), (lambda: 1 / 0, ()), (lambda: "never", ())])
    assert dropped.cancel()  # not started: it never runs
    release.set()
    assert ok.result(10) == 42
    with pytest.raises(ZeroDivisionError):
        failing.result(10)
    assert dropped.cancelled()
    assert pool.submit(lambda: "next").result(10) == "next"  # the thread skipped it and serves on


def test_close_cancels_what_waits_and_refuses_more():
    pool = DecodePool(1)
    release = held(pool)
    waiting = pool.submit(lambda: "late")
    pool.close()
    assert waiting.cancelled()
    release.set()
    with pytest.raises(RuntimeError, match="closed"):
        pool.submit(lambda: None)


def test_every_thread_works():
    pool = DecodePool(3)
    try:
        inside, release = threading.Barrier(4), threading.Event()
        futures = [pool.submit(lambda: (inside.wait(10), release.wait(10))) for _ in range(3)]
        inside.wait(10)  # all three running at once
        release.set()
        for future in futures:
            future.result(10)
    finally:
        pool.close()
    with pytest.raises(ValueError):
        DecodePool(0)
