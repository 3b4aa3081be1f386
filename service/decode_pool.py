"""A front end's decode threads, shared fairly among its requests.

A ThreadPoolExecutor runs jobs in the order they came, so a request of 32 large images made the one
image of every request behind it wait for all 32 (until its deadline, at worst). Here each request's
images wait in a queue of their own, and the threads take one image from each waiting request in
turn: a one-image request waits for at most one image of each request ahead of it, however many
those have. Jobs are ``concurrent.futures.Future``s, so the event loop awaits them as before, and one
not yet started can be cancelled.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class _Job:
    future: Future
    call: Callable[..., Any]
    args: tuple


class DecodePool:
    def __init__(self, threads: int, name: str = "decode") -> None:
        if threads < 1:
            raise ValueError(f"a decode pool needs at least one thread, got {threads}")
        self.threads = threads
        self._changed = threading.Condition()
        self._requests: deque[deque[_Job]] = deque()  # one queue per request, in turn
        self._closed = False
        for k in range(threads):
            threading.Thread(target=self._work, name=f"{name}-{k}", daemon=True).start()

    def submit_request(self, calls: list[tuple[Callable[..., Any], tuple]]) -> list[Future]:
        """One request's jobs, ``(function, args)`` each: futures of their results, in order."""
        jobs = deque(_Job(Future(), call, args) for call, args in calls)
        futures = [job.future for job in jobs]
        if not jobs:
            return futures
        with self._changed:
            if self._closed:
                raise RuntimeError("the decode pool is closed")
            self._requests.append(jobs)
            self._changed.notify(len(jobs))
        return futures

    def submit(self, call: Callable[..., Any], *args: Any) -> Future:
        """One job that is a request of its own."""
        return self.submit_request([(call, args)])[0]

    def close(self) -> None:
        """Cancel every job not yet started; the threads finish the ones they are running, then end."""
        with self._changed:
            self._closed = True
            for jobs in self._requests:
                for job in jobs:
                    job.future.cancel()
            self._requests.clear()
            self._changed.notify_all()

    def _next(self) -> _Job | None:
        with self._changed:
            while not self._requests:
                if self._closed:
                    return None
                self._changed.wait()
            jobs = self._requests.popleft()
            job = jobs.popleft()
            if jobs:  # the request's next image comes after every other request's next one
                self._requests.append(jobs)
            return job

    def _work(self) -> None:
        while (job := self._next()) is not None:
            if not job.future.set_running_or_notify_cancel():
                continue  # cancelled while it waited
            try:
                result = job.call(*job.args)
            except BaseException as exc:  # handed to whoever awaits the future
                job.future.set_exception(exc)
            else:
                job.future.set_result(result)
            del job  # drop the job's arguments (image bytes) before waiting for the next one
