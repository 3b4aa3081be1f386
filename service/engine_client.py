"""A front end's side of the engine connection: submit, await the one Result, mirror the Status.

The connection is made (and remade, every ``RECONNECT_S``) in the background. While it is down, or
when the engine has not been heard from for ``STALE_S``, the front end is not ready and every
request fails at once with 503 ``not_ready``: it never waits for an engine that is not there.

Slots: the spans a Submit names belong to the engine until its Result arrives; only then are they
freed (a cancelled request keeps them until the engine confirms). When the connection drops, every
waiting request fails and all its spans are freed: the engine that could read them is gone.

Metrics: front-end events (request latency, errors, decode time) are buffered and sent as one
``Observe`` every ``FLUSH_S``, and always before a metrics request, which the engine answers with
the exposition text of the whole service.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import time

from service import wire
from service.arena import Arena, Span
from service.errors import NotReady, error_from_kind

log = logging.getLogger("service.frontend")
RECONNECT_S = 0.1
STALE_S = 10 * wire.STATUS_INTERVAL_S
FLUSH_S = 0.1
MAX_BUFFERED_EVENTS = 100_000  # while the engine is away; beyond it the oldest are dropped (counted)


class EngineClient:
    def __init__(self, address: str, frontend: int, arena: Arena) -> None:
        self.address = address
        self.frontend = frontend
        self.arena = arena
        self.status: wire.Status | None = None
        self.model: wire.ModelInfo | None = None  # from the last Status that carried it
        self.connected = False
        self.last_heard = 0.0
        self.dropped_events = 0
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[int, tuple[asyncio.Future, list[Span]]] = {}
        self._metrics_waiters: dict[int, asyncio.Future] = {}
        self._status_waiters: list[asyncio.Future] = []
        self._ids = itertools.count(1)
        self._events: list[tuple] = []
        self._tasks: list[asyncio.Task] = []
        self._closing = False

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._connection_loop(), name="engine-connection"),
            loop.create_task(self._flush_loop(), name="engine-observe"),
        ]

    async def stop(self) -> None:
        self._closing = True
        self.flush()
        if self._writer is not None and self.connected:
            self._writer.write(wire.encode(wire.Goodbye()))
        if self._writer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._writer.drain(), 2)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._writer is not None:
            self._writer.close()
        self._fail_all("the server is shutting down")

    # -- state -----------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.not_ready_reason() is None

    def not_ready_reason(self) -> str | None:
        """None when ready; else why not, in words for /readyz and 503 answers."""
        if not self.connected:
            return "the engine process is not connected (starting, restarting or gone)"
        if time.monotonic() - self.last_heard > STALE_S:
            return f"the engine has not answered for over {STALE_S:.0f} s"
        if self.status is None or not self.status.ready:
            return self.status.reason if self.status is not None else "waiting for the engine's status"
        return None

    async def refresh_status(self, timeout_s: float = 2.0) -> None:
        """Ask the engine for its status now; on timeout the status goes stale (not ready)."""
        if self._writer is None or not self.connected:
            return
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._status_waiters.append(future)
        self._writer.write(wire.encode(wire.StatusRequest()))
        try:
            await asyncio.wait_for(future, timeout_s)
        except (TimeoutError, NotReady):
            self.last_heard = min(self.last_heard, time.monotonic() - STALE_S - 1)

    # -- requests --------------------------------------------------------------------------------
    def submit(
        self, refs: list[wire.ImageRef], spans: list[Span], deadline: float, top_k: int, want_logits: bool
    ) -> tuple[int, asyncio.Future]:
        """Send the images; from this call on their spans are this client's to free, whatever happens.

        Returns the request id (for ``cancel``) and a future that gets the engine's Result.
        """
        if self._writer is None or not self.connected:
            for span in spans:
                self.arena.free(span)
            raise NotReady(self.not_ready_reason() or "the engine is not connected")
        rid = next(self._ids)
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending[rid] = (future, spans)
        self._writer.write(wire.encode(wire.Submit(rid, deadline, refs, top_k, want_logits)))
        return rid, future

    def cancel(self, rid: int) -> None:
        """The client gave up: the engine drops what is still queued and then answers (freeing slots)."""
        if rid in self._pending and self._writer is not None:
            self._writer.write(wire.encode(wire.Cancel(rid)))

    @staticmethod
    def unpack(result: wire.Result) -> list[wire.ImageResult]:
        if result.error_kind is not None:
            raise error_from_kind(result.error_kind, result.error_message or result.error_kind)
        return result.images or []

    # -- metrics ---------------------------------------------------------------------------------
    def observe(self, event: tuple) -> None:
        self._events.append(event)
        if len(self._events) > MAX_BUFFERED_EVENTS:
            drop = len(self._events) - MAX_BUFFERED_EVENTS
            del self._events[:drop]
            self.dropped_events += drop

    def flush(self) -> None:
        if self._events and self._writer is not None and self.connected:
            self._writer.write(wire.encode(wire.Observe(self._events)))
            self._events = []

    async def metrics_text(self, timeout_s: float = 5.0) -> bytes:
        if self._writer is None or not self.connected:
            raise NotReady(self.not_ready_reason() or "the engine is not connected")
        self.flush()  # same connection, in order: the engine counts these before it renders
        token = next(self._ids)
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._metrics_waiters[token] = future
        self._writer.write(wire.encode(wire.MetricsRequest(token)))
        try:
            reply: wire.MetricsText = await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            raise NotReady(f"the engine did not send its metrics within {timeout_s:g} s") from None
        finally:
            self._metrics_waiters.pop(token, None)
        return reply.text

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            self.flush()

    # -- the connection --------------------------------------------------------------------------
    async def _connection_loop(self) -> None:
        loop = asyncio.get_running_loop()
        announced_wait = False
        while not self._closing:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.setblocking(False)
                await loop.sock_connect(sock, "\0" + self.address)
                sock.setblocking(True)
                wire.send_hello(sock, self.frontend, os.getpid(), self.arena.fd)
                sock.setblocking(False)
                reader, writer = await asyncio.open_unix_connection(sock=sock)
            except OSError as exc:
                sock.close()
                if not announced_wait:
                    log.info("waiting for the engine to listen (it is starting: %s)", exc.strerror or exc)
                    announced_wait = True
                await asyncio.sleep(RECONNECT_S)
                continue
            announced_wait = False
            self.model = None  # a new engine describes itself on connect
            self._writer = writer
            self.connected = True
            self.last_heard = time.monotonic()
            log.info("connected to the engine")
            try:
                while True:
                    self._on_message(await wire.read_message(reader))
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                self.connected = False
                self._writer = None
                writer.close()
                self._fail_all("the engine process went away; retry shortly")
            if not self._closing:
                log.warning("lost the engine connection; reconnecting")

    def _on_message(self, message: object) -> None:
        self.last_heard = time.monotonic()
        if isinstance(message, wire.Result):
            entry = self._pending.pop(message.request_id, None)
            if entry is None:
                return
            future, spans = entry
            for span in spans:
                self.arena.free(span)
            if not future.done():
                future.set_result(message)
        elif isinstance(message, wire.Status):
            self.status = message
            if message.model is not None:
                self.model = message.model
            waiters, self._status_waiters = self._status_waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(message)
        elif isinstance(message, wire.MetricsText):
            metrics_waiter = self._metrics_waiters.get(message.token)
            if metrics_waiter is not None and not metrics_waiter.done():
                metrics_waiter.set_result(message)
        else:
            raise TypeError(f"unexpected message {type(message).__name__}")

    def _fail_all(self, reason: str) -> None:
        pending, self._pending = self._pending, {}
        for future, spans in pending.values():
            for span in spans:
                self.arena.free(span)
            if not future.done():
                future.set_exception(NotReady(reason))
        for waiter in [*self._metrics_waiters.values(), *self._status_waiters]:
            if not waiter.done():
                waiter.set_exception(NotReady(reason))
        self._status_waiters = []
