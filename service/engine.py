"""The engine process: owns the backend, the one batcher, warm-up, readiness and the metrics.

    python -m service.engine --socket NAME      # started by service.supervisor, never by hand

It listens on an abstract Unix socket (no file on disk; only processes of the same user may
connect: SO_PEERCRED) for the HTTP front ends. Each front end sends its arena's descriptor once,
then ``Submit`` messages naming images in that arena; the engine queues them in the batcher, runs
batches (``EngineRunner``: normalisation on the backend's device, JPEG decoding on the GPU where
there is one, softmax + top-k) and answers each Submit with exactly one ``Result``. It pushes its
``Status`` (ready or why not, the model's facts) on connect, on every change and every half second.

SIGTERM: stop taking work (status "shutting down"), finish what is queued and running, answer it,
exit 0. The supervisor stops the front ends first, so by then the queue is normally empty. A load
still running ends at its next step (engine_load checks between steps and warm-up batches).

A model that fails to load (a backend that cannot run here, a load or warm-up that raises) is final:
the engine logs why once and exits ``EXIT_MODEL_NOT_LOADED`` (3), and the supervisor stops the server
with that status instead of restarting it (as Triton's default ``--exit-on-error``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from service import wire
from service.arena import ArenaView
from service.backends import Selection
from service.batch_runner import EngineImage, EngineRunner, ImageOutput
from service.batcher import Batcher, InferenceResult
from service.engine_link import Connection, listening_socket
from service.engine_load import load_model
from service.errors import LoadStopped, ServiceError
from service.metrics import Metrics
from service.process import (
    EXIT_MODEL_NOT_LOADED,
    follow_parent,
    reuse_freed_memory,
    settle_garbage_collector,
    use_uvloop,
)
from service.settings import Settings

# /metrics is rendered at most once per this many seconds; a scrape waits at most this long for it.
METRICS_INTERVAL_S = 0.1

log = logging.getLogger("service.engine")


@dataclass(slots=True)
class _Preload:
    """A request whose crops are normalised before it joins the queue (see EngineServer._preload_loop)."""

    conn: Connection
    rid: int
    images: list[EngineImage]
    deadline: float


class EngineServer:
    def __init__(self, settings: Settings, address: str, when_loaded: Callable[[], None] | None = None) -> None:
        """``when_loaded``: called once in the loop, after the model loaded and warmed up, before the
        engine says it is ready (the engine process settles its garbage collector there)."""
        self.settings = settings
        self.address = address
        self._when_loaded = when_loaded
        self.metrics = Metrics()
        self.selection: Selection | None = None
        self._closing = threading.Lock()
        self._closed = False
        self.batcher: Batcher | None = None
        self.runner: EngineRunner | None = None
        self.model: wire.ModelInfo | None = None
        self.loaded = False
        self.stopping = False
        self.startup_error: str | None = None  # why the model failed to load; then serve() ends by itself
        self._stop: asyncio.Event | None = None
        self._load_stop = threading.Event()  # set with the stop: a load in its thread ends at its next step
        self._connections: set[Connection] = set()
        self._connection_tasks: set[asyncio.Task] = set()
        self._preloader = ThreadPoolExecutor(1, thread_name_prefix="preload")
        self._preload_waiting: list[_Preload] = []
        self._preload_task: asyncio.Task | None = None
        self._last_status: wire.Status | None = None
        self._decoded_seen: dict[str, int] = {}
        self._scrapes: list[tuple[Connection, int]] = []  # waiting for the next rendering
        self._metrics_at = -METRICS_INTERVAL_S  # when the last rendering was made

    # -- state -----------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.loaded and not self.stopping and self.batcher is not None and self.batcher.healthy

    def status(self) -> wire.Status:
        if self.ready:
            reason = ""
        elif self.startup_error:  # before "shutting down": the engine stops because of it
            reason = f"the model failed to load: {self.startup_error}"
        elif self.stopping:
            reason = "shutting down"
        elif not self.loaded:
            reason = "loading or warming up"
        else:
            reason = "backend unhealthy (failing or stalled)"
        return wire.Status(
            self.ready, reason, self.model, self.startup_error, {"warmed_up": self.loaded and self.settings.warmup}
        )

    def _broadcast_status(self, force: bool = False) -> None:
        """The status to every front end when it changed; with ``force`` (the heartbeat) anyway, but
        then without the model's facts (1000 labels) when those did not change."""
        status = self.status()
        changed = status != self._last_status
        if changed or force:
            message = status
            if not changed and self._last_status is not None and status.model is self._last_status.model:
                message = dataclasses.replace(status, model=None)
            for conn in list(self._connections):
                conn.send(message)
            self._last_status = status

    # -- loading ---------------------------------------------------------------------------------
    def _load(self) -> None:
        """The backend, decode path and warm-up (blocking; in a thread): see engine_load."""
        loaded = load_model(self.settings, self._load_stop)
        with self._closing:
            self.selection, self.runner, self.model = loaded.selection, loaded.runner, loaded.model
        if self.stopping:  # stopped while this thread loaded: serve() did not know the backend yet
            self._close_backend()

    def _close_backend(self) -> None:
        """Close the backend once, from whichever of serve()'s shutdown and a late load gets here first."""
        with self._closing:
            if self.selection is not None and not self._closed:
                self._closed = True
                self.selection.backend.close()

    async def _start(self) -> None:
        s = self.settings
        try:
            await asyncio.to_thread(self._load)
            assert self.runner is not None
            self.runner.on_gpu_seconds = self.metrics.observe_gpu_seconds  # after the warm-up: requests only
            batcher = Batcher(  # refuses a max_batch_size over the backend's (a TensorRT plan's profile)
                self.runner,
                self.metrics,
                s.max_batch_size,
                s.max_delay_ms,
                s.queue_capacity,
                stall_after_s=s.request_timeout_s,
            )
        except LoadStopped as exc:  # asked to stop: not a failure to load (the process exits 0)
            log.info("stopped while loading the model (%s)", exc)
            return
        except Exception as exc:  # final: say why once, then stop (the process exits EXIT_MODEL_NOT_LOADED)
            if self._load_stop.is_set():  # failed after the stop was asked for: stopping anyway, exit 0
                log.warning("the model failed to load while stopping: %s: %s", type(exc).__name__, exc)
                return
            self.startup_error = f"{type(exc).__name__}: {exc}"
            log.error("the model could not be loaded: %s", self.startup_error)
            self._close_backend()  # one that loaded (the batcher refused it) is of no more use
            self._broadcast_status()
            if self._stop is not None:
                self._stop.set()
            return
        if self._when_loaded is not None:
            self._when_loaded()
        self.batcher = batcher
        self.batcher.start()
        self.loaded = True
        log.info("ready")
        self._broadcast_status()

    # -- serving ---------------------------------------------------------------------------------
    async def serve(self, stop: asyncio.Event, listener: socket.socket | None = None) -> None:
        """Listen, load, serve until ``stop`` is set (or the model fails to load), then drain and close."""
        self._stop = stop
        listener = listener or listening_socket(self.address)
        loader = asyncio.create_task(self._start(), name="engine-load")
        acceptor = asyncio.create_task(self._accept(listener), name="engine-accept")
        heartbeat = asyncio.create_task(self._heartbeat(), name="engine-heartbeat")
        try:
            await stop.wait()
            self._load_stop.set()
            if self.startup_error is None:  # after a failed load nothing is in flight to wait for
                await self._until_frontends_leave()
        finally:
            self._load_stop.set()
            if self.startup_error is None:
                log.info("stopping: finishing queued and running batches")
            self.stopping = True
            self._broadcast_status()
            acceptor.cancel()
            listener.close()
            if self.batcher is not None:
                await self.batcher.stop(drain_timeout_s=self.settings.request_timeout_s + 5)
            if self._preload_task is not None:
                await asyncio.wait([self._preload_task], timeout=5)
            # Front ends that stopped first: read their last events to the end. After a failed load they
            # are still up (the supervisor stops them once this process exits), with nothing to send.
            if self._connection_tasks and self.startup_error is None:
                await asyncio.wait(self._connection_tasks, timeout=2)
            for conn in list(self._connections):
                conn.flush()  # the last answers, queued in this turn of the loop
                with contextlib.suppress(Exception):
                    await conn.writer.drain()
                conn.writer.close()
            loader.cancel()
            heartbeat.cancel()
            await asyncio.gather(loader, acceptor, heartbeat, return_exceptions=True)
            self._preloader.shutdown(wait=False, cancel_futures=True)
            self._close_backend()
            log.info("stopped")

    async def _until_frontends_leave(self) -> None:
        """Signalled while front ends are still connected (signalled with them, not after them): serve
        them until they have finished their requests in flight and disconnected, up to their own
        graceful time, instead of failing those requests with 503."""
        tasks = set(self._connection_tasks)
        if tasks:
            log.info("stopping: %d front end(s) still connected; serving them until they leave", len(tasks))
            await asyncio.wait(tasks, timeout=self.settings.request_timeout_s + 5)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(wire.STATUS_INTERVAL_S)
            self._broadcast_status(force=True)

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sock, _ = await loop.sock_accept(listener)
            task = loop.create_task(self._serve_connection(sock))
            self._connection_tasks.add(task)
            task.add_done_callback(self._connection_tasks.discard)

    async def _serve_connection(self, sock: socket.socket) -> None:
        try:
            if wire.peer_uid(sock) != os.getuid():
                log.warning("refused a connection from another user")
                sock.close()
                return
            sock.setblocking(True)
            sock.settimeout(5)
            frontend, pid, fd = await asyncio.to_thread(wire.receive_hello, sock)
            sock.settimeout(None)
            sock.setblocking(False)
            reader, writer = await asyncio.open_unix_connection(sock=sock)
        except (OSError, ValueError) as exc:
            log.warning("a front end failed its hello: %s", exc)
            sock.close()
            return
        conn = Connection(frontend, pid, ArenaView(fd), writer)
        self._connections.add(conn)
        self.metrics.frontends.set(len(self._connections))
        log.info("front end %d (pid %d) connected", frontend, pid)
        conn.send(self.status())
        try:
            while True:
                message = await wire.read_message(reader)
                self._handle(conn, message)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except Exception:
            log.exception("front end %d sent something unreadable; dropping its connection", frontend)
        finally:
            self._connections.discard(conn)
            self.metrics.frontends.set(len(self._connections))
            for futures in conn.pending.values():  # nobody is left to answer: free their batch slots
                for future in futures:
                    future.cancel()
            writer.close()
            if conn.leaving or self.stopping:
                log.info("front end %d (pid %d) disconnected", frontend, pid)
            else:
                log.warning("front end %d (pid %d) disconnected without a goodbye (it died?)", frontend, pid)
            # Its arena is not closed here: a batch formed before the front end went, or the preload
            # thread, may still be reading it. The mapping goes with its last reference (arena.py).

    def _handle(self, conn: Connection, message: object) -> None:
        if isinstance(message, wire.Submit):
            self._submit(conn, message)
        elif isinstance(message, wire.Cancel):
            if message.request_id in conn.pending:
                for future in conn.pending[message.request_id]:
                    future.cancel()
            elif message.request_id in conn.preloading:
                conn.cancelled.add(message.request_id)
        elif isinstance(message, wire.Observe):
            self.metrics.apply(message.events)
        elif isinstance(message, wire.MetricsRequest):
            self._scrape(conn, message.token)
        elif isinstance(message, wire.StatusRequest):
            conn.send(self.status())
        elif isinstance(message, wire.Goodbye):
            conn.leaving = True
        else:
            raise TypeError(f"unexpected message {type(message).__name__}")

    def _submit(self, conn: Connection, message: wire.Submit) -> None:
        rid = message.request_id
        images = [EngineImage(conn.arena, ref, message.top_k, message.want_logits) for ref in message.images]
        if not self.ready or self.batcher is None or self.runner is None:
            conn.send(
                wire.Result(
                    rid, error_kind="not_ready", error_message=f"the model is not ready: {self.status().reason}"
                )
            )
            return
        if self.runner.preloads and self.batcher.busy:  # normalise now, while the running batch runs
            conn.preloading.add(rid)
            self._preload_waiting.append(_Preload(conn, rid, images, message.deadline))
            if self._preload_task is None:
                self._preload_task = asyncio.get_running_loop().create_task(self._preload_loop())
        else:
            self._queue(conn, rid, images, message.deadline)

    def _queue(self, conn: Connection, rid: int, images: list[EngineImage], deadline: float) -> None:
        """Into the batcher, answered once every image is done; or the refusal, sent now."""
        assert self.batcher is not None
        try:
            futures = self.batcher.submit(images, deadline)
        except ServiceError as exc:
            conn.send(wire.Result(rid, error_kind=exc.kind, error_message=exc.message))
            return
        conn.pending[rid] = futures
        waiting = len(futures)

        def one_done(_future: asyncio.Future) -> None:  # a callback, not a task per request: less per request
            nonlocal waiting
            waiting -= 1
            if waiting == 0:
                self._answer(conn, rid, futures)

        for future in futures:
            future.add_done_callback(one_done)

    async def _preload_loop(self) -> None:
        """Normalise every request that arrived while a batch runs, all that are waiting in one hop to
        the preload thread (a hop per request cost more event-loop time than the rest of a request)."""
        try:
            while self._preload_waiting:
                work, self._preload_waiting = self._preload_waiting, []
                errors = await asyncio.get_running_loop().run_in_executor(self._preloader, self._preload_each, work)
                for item, error in zip(work, errors, strict=True):
                    self._after_preload(item, error)
        finally:
            self._preload_task = None

    def _preload_each(self, work: list[_Preload]) -> list[ServiceError | None]:
        """On the preload thread: each request's images normalised, or why not."""
        assert self.runner is not None
        errors: list[ServiceError | None] = []
        for item in work:
            try:
                self.runner.preload(item.images)
                errors.append(None)
            except ServiceError as exc:
                errors.append(exc)
            except Exception as exc:
                log.exception("preloading request %d failed", item.rid)
                errors.append(ServiceError(f"preprocessing failed ({type(exc).__name__})"))
        return errors

    def _after_preload(self, item: _Preload, error: ServiceError | None) -> None:
        conn, rid = item.conn, item.rid
        conn.preloading.discard(rid)
        if conn not in self._connections:  # its front end is gone: nobody to answer
            return
        if error is not None:
            conn.send(wire.Result(rid, error_kind=error.kind, error_message=error.message))
            return
        if rid in conn.cancelled:  # the client gave up meanwhile
            conn.cancelled.discard(rid)
            conn.send(wire.Result(rid, error_kind="internal", error_message="cancelled"))
            return
        self._queue(conn, rid, item.images, item.deadline)

    def _answer(self, conn: Connection, rid: int, futures: list[asyncio.Future]) -> None:
        """The one Result of a request, once every image is done (answered, dropped or cancelled)."""
        conn.pending.pop(rid, None)
        error: ServiceError | None = None
        results: list[wire.ImageResult] = []
        for future in futures:
            if future.cancelled():
                error = error or ServiceError("cancelled")
                continue
            exc = future.exception()
            if exc is not None:
                error = error or (exc if isinstance(exc, ServiceError) else ServiceError(f"{type(exc).__name__}"))
                continue
            result: InferenceResult = future.result()
            out: ImageOutput = result.output
            results.append(
                wire.ImageResult(
                    None if out.indices is None else out.indices.tolist(),  # lists of 5 pickle 3x faster than arrays
                    None if out.probabilities is None else out.probabilities.tolist(),
                    out.logits,
                    result.queue_ms,
                    result.inference_ms,
                    result.batch_size,
                    out.decode,
                )
            )
        if error is not None:
            conn.send(wire.Result(rid, error_kind=error.kind, error_message=error.message))
        else:
            conn.send(wire.Result(rid, images=results))

    def _scrape(self, conn: Connection, token: int) -> None:
        """Answer a scrape with a rendering made after it arrived (so it holds everything the front
        end flushed before asking), but render at most once per METRICS_INTERVAL_S: scrapes that
        come sooner wait for the next rendering and share it. Rendering costs ~5 ms of the engine's
        thread, and /metrics needs no key by default: a review's 8 clients scraping nonstop took a
        whole engine core and tripled /classify's p50."""
        self._scrapes.append((conn, token))
        if len(self._scrapes) > 1:
            return  # a rendering is already due
        wait = self._metrics_at + METRICS_INTERVAL_S - time.monotonic()
        if wait <= 0:
            self._answer_scrapes()
        else:
            asyncio.get_running_loop().call_later(wait, self._answer_scrapes)

    def _answer_scrapes(self) -> None:
        text = self.render_metrics()
        scrapes, self._scrapes = self._scrapes, []
        for conn, token in scrapes:
            conn.send(wire.MetricsText(token, text))

    def render_metrics(self) -> bytes:
        self._metrics_at = time.monotonic()
        m = self.metrics
        m.ready.set(1 if self.ready else 0)
        if self.runner is not None:
            for path, count in self.runner.decoded().items():
                seen = self._decoded_seen.get(path, 0)
                if count > seen:
                    m.decoded.labels(path).inc(count - seen)
                    self._decoded_seen[path] = count
        return m.render()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.engine", description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True, help="abstract Unix socket name to listen on")
    parser.add_argument("--parent", type=int, default=None, help="supervisor pid: exit when it is gone")
    args = parser.parse_args(argv)
    if not follow_parent(args.parent):
        return 1  # the supervisor died before we could ask to follow it
    reuse_freed_memory()
    settings = Settings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s[engine]: %(message)s"
    )

    return run_engine(settings, args.socket)


def run_engine(settings: Settings, address: str) -> int:
    """Serve on ``address`` until SIGTERM or SIGINT, on uvloop where installed; the exit status:
    0, or ``EXIT_MODEL_NOT_LOADED`` when the model failed to load."""
    engine = EngineServer(settings, address, when_loaded=settle_garbage_collector)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await engine.serve(stop)

    use_uvloop()
    asyncio.run(serve())
    return 0 if engine.startup_error is None else EXIT_MODEL_NOT_LOADED


if __name__ == "__main__":
    raise SystemExit(main())
