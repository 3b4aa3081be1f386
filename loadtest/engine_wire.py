"""The engine's own ceiling: requests per second its one event loop can take, with inference free.

    python -m loadtest.engine_wire                        # 2 front-end processes x 64 in flight, 10 s
    python -m loadtest.engine_wire --frontends 4 --in-flight 128 --seconds 20

On a GPU host every front end feeds one engine process, so that process's event loop (receive a
Submit, queue it, batch, answer) bounds the whole service however fast the GPU is. This runs the
real engine (``python -m service.engine``'s ``EngineServer``, the model's real metadata and
preprocessing facts) with a backend that answers at once, and front-end processes that use the
real ``EngineClient`` and arena with one 224x224 crop per request, no HTTP. It prints the requests
per second and, from ``/proc``, the engine's CPU time per request: its event-loop thread (the part
that cannot spread over cores) and all its threads together. 1e6 / (loop us per request) is the
most requests per second one engine can take on this CPU, whatever the rest of the host.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import secrets
import sys
import time
from pathlib import Path

import numpy as np

from loadtest.bench import ensure_onnx
from model.help_format import DefaultsRawDescriptionHelpFormatter
from model.host import cpu_model
from service.backends.base import Backend
from service.cpus import usable_cpus

TICK = os.sysconf("SC_CLK_TCK")
WARM_UP_S = 3.0  # between every front end being ready and the measured window


class InstantBackend(Backend):
    """Answers every batch at once with zero logits, in the real backend's batch sizes."""

    def __init__(self, inner: Backend) -> None:
        self.name, self.device, self.precision = "instant", "cpu", inner.precision
        self.max_batch_size, self.batch_sizes, self.max_concurrency = inner.max_batch_size, inner.batch_sizes, 1
        self.num_classes = 1000

    def warmup(self, input_size: int, stop=None) -> None:
        pass

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return np.zeros((batch.shape[0], self.num_classes), np.float32)


def engine_process(address: str, onnx: str, in_flight: int) -> None:
    """The engine process: ``service.engine.run_engine``, the backend made instant, its queue deep
    enough for every request the front ends keep in flight (``in_flight``, all of them together)."""
    os.environ.update(
        {
            "ALEXNET_ONNX": onnx,
            "ALEXNET_BACKEND": "onnxruntime",
            "ALEXNET_DEVICE": "cpu",
            "ALEXNET_QUEUE_CAPACITY": str(max(256, in_flight)),
        }
    )
    os.environ.setdefault("ALEXNET_LOG_LEVEL", "warning")
    import service.engine
    import service.engine_load
    from service.process import follow_parent, reuse_freed_memory
    from service.settings import Settings

    follow_parent(None)  # gone with this tool, however it ends (a killed parent leaves no engine)
    reuse_freed_memory()
    select = service.engine_load.select_backend

    def instant(settings):
        selection = select(settings)
        selection.backend = InstantBackend(selection.backend)
        return selection

    service.engine_load.select_backend = instant
    service.engine.run_engine(Settings(), address)


def run_frontend(address: str, index: int, in_flight: int, seconds: float, parent) -> None:
    """One front end's worth of load: ``in_flight`` requests always outstanding, one crop each. Over
    ``parent`` (a pipe): "ready" once the engine is, then the window's start (time.monotonic(), the
    same clock in every process) comes back; the requests done in the window go out at the end, or
    why there were none (a string)."""
    from service import wire
    from service.arena import SLOT_BYTES, Arena
    from service.engine_client import EngineClient
    from service.process import follow_parent, use_uvloop

    follow_parent(None)

    async def main() -> None:
        arena = Arena(in_flight + 8, SLOT_BYTES)
        client = EngineClient(address, index, arena)
        client.start()
        give_up = time.monotonic() + 120
        while not client.ready:
            if time.monotonic() > give_up:
                parent.send(f"the engine was not ready within 120 s: {client.not_ready_reason()}")
                return
            await asyncio.sleep(0.05)
        parent.send("ready")
        start_at = await asyncio.to_thread(parent.recv)
        size = client.model.input_size  # type: ignore[union-attr]
        crop = np.random.default_rng(index).integers(0, 256, (size, size, 3), dtype=np.uint8)
        done = 0
        end = start_at + seconds

        async def one_at_a_time() -> None:
            nonlocal done
            while time.monotonic() < end:
                span = arena.allocate(crop.nbytes)
                arena.array(span, crop.shape, np.uint8)[...] = crop
                ref = wire.ImageRef("crop", span.offset, crop.nbytes)
                _rid, future = client.submit([ref], [span], time.monotonic() + 30, 5, False)
                client.unpack(await future)
                if start_at <= time.monotonic() < end:
                    done += 1

        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        await asyncio.gather(*(one_at_a_time() for _ in range(in_flight)))
        parent.send(done)
        await client.stop()

    use_uvloop()
    try:
        asyncio.run(main())
    except Exception as exc:  # said once, by the parent, instead of a traceback per front end
        parent.send(f"front end {index}: {type(exc).__name__}: {exc}")


def thread_cpu_s(pid: int) -> dict[int, float]:
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / TICK
    return out


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtest.engine_wire", description=__doc__, formatter_class=DefaultsRawDescriptionHelpFormatter
    )
    p.add_argument("--onnx", default="artifacts/alexnet.onnx", help="model whose facts the engine serves")
    p.add_argument("--frontends", type=int, default=2, help="front-end processes")
    p.add_argument("--in-flight", type=int, default=64, help="requests outstanding per front end")
    p.add_argument("--seconds", type=float, default=10.0, help=f"measured seconds (after {WARM_UP_S:g} s of warm-up)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if sys.platform != "linux":
        print("needs Linux (/proc, abstract Unix sockets)", file=sys.stderr)
        return 2
    ensure_onnx(Path(args.onnx))
    ctx = multiprocessing.get_context("spawn")
    address = f"alexnet-engine-wire-{os.getpid()}-{secrets.token_hex(4)}"
    engine = ctx.Process(
        target=engine_process, args=(address, str(args.onnx), args.frontends * args.in_flight), daemon=True
    )
    engine.start()
    frontends: list = []
    try:
        return _measure(args, ctx, address, engine, frontends)
    finally:  # on every way out (a front end that never got ready included): none left waiting
        for proc in [*frontends, engine]:
            if proc.is_alive():
                proc.terminate()


def _measure(args: argparse.Namespace, ctx, address: str, engine, frontends: list) -> int:
    """Start the front ends (into ``frontends``), measure the engine, print the figures; the exit status."""
    pipes = []
    for i in range(args.frontends):
        ours, theirs = ctx.Pipe()
        proc = ctx.Process(target=run_frontend, args=(address, i, args.in_flight, args.seconds, theirs))
        proc.start()
        pipes.append(ours)
        frontends.append(proc)
    assert engine.pid is not None
    # The window starts once every front end has the engine ready (on a small, busy host loading the
    # model and spawning the front ends can take longer than any fixed wait), after a warm-up.
    for pipe in pipes:
        try:
            said = pipe.recv() if pipe.poll(150) else "a front end did not start within 150 s"
        except EOFError:
            said = "a front end exited before the engine was ready"
        if said != "ready":
            print(said, file=sys.stderr)
            return 1
    start_at = time.monotonic() + WARM_UP_S
    for pipe in pipes:
        pipe.send(start_at)
    time.sleep(max(0.0, start_at - time.monotonic()))
    before = thread_cpu_s(engine.pid)
    time.sleep(args.seconds)
    after = thread_cpu_s(engine.pid)
    counts = []
    for pipe in pipes:
        if not pipe.poll(args.seconds + 150):
            print("a front end did not report", file=sys.stderr)
            return 1
        counts.append(pipe.recv())
    if failures := [c for c in counts if isinstance(c, str)]:
        print(failures[0], file=sys.stderr)
        return 1
    done = sum(counts)
    for proc in frontends:
        proc.join(30)
    engine.terminate()
    engine.join(30)
    if not done:
        print("no request completed: did the engine start? (run with ALEXNET_LOG_LEVEL=info)", file=sys.stderr)
        return 1
    loop_s = after.get(engine.pid, 0.0) - before.get(engine.pid, 0.0)
    total_s = sum(after.values()) - sum(before.get(t, 0.0) for t in after)
    loop_us, total_us = loop_s / done * 1e6, total_s / done * 1e6
    print(f"host: {cpu_model()}, {usable_cpus()} CPUs usable")
    print(
        f"engine with an instant backend, {args.frontends} front-end processes x {args.in_flight} in flight, "
        f"{args.seconds:.0f} s: {done / args.seconds:,.0f} requests/s (1 image each)"
    )
    print(f"  engine event-loop thread: {loop_us:.0f} us CPU per request -> at most {1e6 / loop_us:,.0f} requests/s")
    print(f"  engine, all threads:      {total_us:.0f} us CPU per request")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
