"""What the engine loads before it says ready: the backend, where JPEGs are decoded, the warm-up,
and the model's facts that the front ends serve (``wire.ModelInfo``). Blocking: run it in a thread."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from service import wire
from service.backends import Selection, select_backend
from service.batch_runner import EngineRunner
from service.errors import LoadStopped, NotReady
from service.settings import Settings

log = logging.getLogger("service.engine")


@dataclass
class LoadedModel:
    selection: Selection
    runner: EngineRunner
    model: wire.ModelInfo


def choose_decode(settings: Settings, selection: Selection) -> tuple[object | None, str]:
    """(a JpegDecoder or None, why): where JPEGs are decoded, for --decode auto|cpu|gpu. ``auto`` takes
    the GPU only with a decoder whose chroma matches the CPU path's (``start_jpeg_decoder``'s probe):
    answers then do not depend on where an image was decoded. ``gpu`` takes the first that decodes."""
    backend = selection.backend
    if settings.decode == "cpu":
        return None, "decode=cpu was asked for"
    on_cuda = str(backend.device).startswith("cuda")
    why_not = None
    if not on_cuda:
        why_not = f"the {backend.name} backend runs on {backend.device}, not a CUDA GPU"
    elif not backend.takes_tensors:
        why_not = f"the {backend.name} backend takes host batches only"
    if why_not is None:
        from service.gpu_decode import start_jpeg_decoder

        meta = selection.metadata
        try:
            decoder, name = start_jpeg_decoder(backend.device, meta.resize_size, meta.input_size)
        except RuntimeError as exc:
            why_not = f"no GPU JPEG decoder is usable here: {exc}"
        else:
            if decoder.interpolates_chroma or settings.decode == "gpu":
                if decoder.warning:
                    log.warning("%s", decoder.warning)
                return decoder, f"nvJPEG on the GPU via {name} ({decoder.chroma}), CPU for what it does not take"
            why_not = (
                f"no GPU JPEG decoder here interpolates chroma as the CPU path does (the first that decodes, "
                f"{name}: {decoder.chroma}); --decode gpu decodes on the GPU anyway"
            )
    if settings.decode == "gpu":
        raise NotReady(f"decode=gpu was asked for, but {why_not}")
    return None, f"auto: on the CPU in the front ends, because {why_not}"


def load_model(settings: Settings, stop: threading.Event | None = None) -> LoadedModel:
    """Select and build the backend, choose the decode path, warm up (with ``settings.warmup``). On a
    failure after the backend was built, the backend is closed before the error goes up.

    ``stop`` (set when the engine is told to stop) is checked between the steps and between warm-up
    batches: a stop during a slow load raises LoadStopped at the next one instead of warming up first.
    """
    s = settings
    stop = stop or threading.Event()

    def check_stop(before: str) -> None:
        if stop.is_set():
            raise LoadStopped(f"told to stop before {before}")

    check_stop("building the backend")
    t0 = time.perf_counter()
    selection = select_backend(s)
    backend, meta = selection.backend, selection.metadata
    log.info(
        "backend %s (%s, %s), model %s weights=%s, loaded in %.1f s: %s",
        backend.name,
        backend.device,
        backend.precision,
        meta.arch,
        meta.weights,
        time.perf_counter() - t0,
        selection.reason,
    )
    if meta.untrained:
        log.warning("SERVING AN UNTRAINED MODEL: its labels are meaningless (weights: untrained)")
    try:
        check_stop("choosing the decode path")
        decoder, decode_reason = choose_decode(s, selection)
        log.info("JPEG decoding: %s", decode_reason)
        runner = EngineRunner(backend, meta, decoder)
        if s.warmup:
            check_stop("the warm-up")
            t1 = time.perf_counter()
            backend.warmup(meta.input_size, stop)
            check_stop("the end of the warm-up")
            runner.warm_up()
            log.info("warm-up done in %.2f s", time.perf_counter() - t1)
        check_stop("saying ready")
        model = wire.ModelInfo(
            arch=meta.arch,
            weights=meta.weights,
            untrained=meta.untrained,
            weights_sha256=meta.weights_sha256,
            labels=list(meta.labels),
            input_size=meta.input_size,
            resize_size=meta.resize_size,
            mean=tuple(meta.mean),  # type: ignore[arg-type]
            std=tuple(meta.std),  # type: ignore[arg-type]
            backend=backend.describe(),
            backend_reason=selection.reason,
            backends_skipped=dict(selection.skipped),
            decode="gpu" if decoder is not None else "cpu",
            decode_reason=decode_reason,
            batches_overlap=runner.prepare_ahead or backend.max_concurrency > 1,
            weights_provenance=dict(meta.provenance),
        )
    except BaseException:
        backend.close()
        raise
    return LoadedModel(selection, runner, model)
