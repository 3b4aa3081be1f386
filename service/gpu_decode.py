"""JPEG decoding on the GPU for the engine: nvJPEG, through nvImageCodec where it is installed, else
through torchvision, then the shared tensor resize + crop, all on the device. Images it cannot take
come back as exceptions, per image; the engine declines those and their front end decodes them on
its CPU instead (service.batch_runner): a client gets the CPU path's answer, a batch later.

Why more than one: the CPU path (PIL, libjpeg-turbo) interpolates the colour of 4:2:0 and 4:2:2 JPEGs
(most photos); ``torchvision.io.decode_jpeg(device="cuda")`` creates nvJPEG with its default flags,
which repeat it, and on saturated images its crops then differ from the CPU path's by up to 9.5/255
on average (docs/gpu.md, "JPEG chroma on the GPU"). nvImageCodec is asked for nvJPEG's interpolation
(``fancy_upsampling``), but each of its backends may ignore the option, so the engine measures the
chroma of each candidate at start-up on a batch of probe JPEGs, one of each kind its backends may take
(service.chroma_probe), and takes the first that decodes and interpolates on all of them. torchvision is
present wherever PyTorch's CUDA build is, so it stays the last candidate. None applies EXIF
orientation here: the front end reads it from the header and it is applied on the decoded tensor.
"""

from __future__ import annotations

import ctypes
import importlib.util
import io
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from model.preprocessing import apply_exif_orientation_tensor, resize_crop_tensor
from service.chroma_probe import CHROMA_THRESHOLD, ChromaDiff, chroma_diff, describe_chroma
from service.decode_batch import DecodeBatch, decode_each

log = logging.getLogger(__name__)

# Decoded bytes (uint8 values summed over a group's images) resized in one call: bounds the group's
# float32 copy (four times as many bytes: 192 MiB) whatever the batch size.
GROUP_MAX_BYTES = 48 << 20


def same_size_groups(
    images: list[tuple[int, torch.Tensor]], max_bytes: int = GROUP_MAX_BYTES
) -> list[list[tuple[int, torch.Tensor]]]:
    """(index, image) pairs grouped by shape and dtype, first seen first, each group cut to at most
    ``max_bytes`` of uint8 values (and at least one image)."""
    by_shape: dict[tuple, list[list[tuple[int, torch.Tensor]]]] = {}
    for item in images:
        image = item[1]
        chunks = by_shape.setdefault((tuple(image.shape), image.dtype), [[]])
        if chunks[-1] and (len(chunks[-1]) + 1) * image.numel() > max_bytes:
            chunks.append([])
        chunks[-1].append(item)
    return [chunk for chunks in by_shape.values() for chunk in chunks]


def wait_for_stream(stream: torch.cuda.Stream | None = None) -> None:
    """Block until the work queued on ``stream`` (default: the current stream) is done, asleep on a
    blocking event: ``Stream.synchronize`` and ``.cpu()`` spin a core while they wait (CUDA's default
    on a host with more cores than GPU contexts), a core the front ends could use."""
    done = torch.cuda.Event(blocking=True)
    done.record(stream)
    done.synchronize()


def torchvision_decoder(device: str) -> DecodeBatch:
    """nvJPEG via torchvision, or an ImportError/RuntimeError saying why it is not available here.

    torchvision allocates the decoded images on the caller's current stream but has nvJPEG write them
    from a stream of its own that does not wait for the caller's (torchvision's decode_jpegs_cuda.cpp;
    pytorch/vision PR #9606). Memory the caller's stream freed with kernels still queued that use it
    could be handed to nvJPEG and overwritten under them, so the caller's stream is drained first. It
    costs little: torchvision waits for its own stream on every call anyway.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    on_cuda = torch.device(device).type == "cuda"

    def decode(data: list[torch.Tensor]) -> Sequence[torch.Tensor]:
        if on_cuda:
            wait_for_stream(torch.cuda.current_stream(device))
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)

    return decode


# The nvImageCodec extensions the engine decodes with: nvJPEG's (the hardware and CUDA JPEG decoders) and
# libjpeg-turbo's (its CPU decoder, which runs this code on a CPU host). Left to itself it loads every
# extension in its folder, and those whose CUDA library is not installed (nvJPEG2000, nvTIFF: JPEG 2000
# and TIFF, which the engine is never sent) each print an [ERROR] into the engine's log at start-up.
NVIMGCODEC_EXTENSIONS = ("libnvjpeg_ext", "libjpeg_turbo_ext")


def import_nvimgcodec():
    """``nvidia.nvimgcodec``, with only ``NVIMGCODEC_EXTENSIONS`` loaded where this import is the first in
    the process (it loads its extensions once, on import) and ``NVIMGCODEC_EXTENSIONS_PATH`` is not set
    already (then the user's choice stands): their files, linked from a folder of their own, are what
    it is pointed at for the import. An ImportError where it is not installed.

    Each chosen extension is loaded from its real path first. An extension finds the CUDA library it
    wraps (nvJPEG's ``libnvjpeg.so.13``) when nvImageCodec registers it, through its run path, relative
    to the folder it was loaded from (``$ORIGIN/../../cu13/lib``, where the nvidia-nvjpeg wheel puts it):
    loaded through a link in a temporary folder, it would look there and find nothing ("Failed to load
    nvjpeg library", and no GPU decoder). The dynamic loader knows the link's file as the one already
    loaded and hands nvImageCodec that copy, with its real folder."""
    # Its C++ side prints a warning per image it cannot parse; the engine reports those itself. Read
    # once, at import: errors still print.
    os.environ.setdefault("PYNVIMGCODEC_VERBOSITY", "1")
    if "nvidia.nvimgcodec" not in sys.modules and "NVIMGCODEC_EXTENSIONS_PATH" not in os.environ:
        spec = importlib.util.find_spec("nvidia.nvimgcodec")
        folders = list(spec.submodule_search_locations or []) if spec is not None else []
        chosen = [
            path
            for folder in folders[:1]
            for path in sorted((Path(folder) / "extensions").glob("*.so*"))
            if path.name.partition(".so")[0] in NVIMGCODEC_EXTENSIONS
        ]
        if chosen:
            with tempfile.TemporaryDirectory(prefix="alexnet-nvimgcodec-") as only:
                for path in chosen:
                    ctypes.CDLL(str(path))  # never unloaded (ctypes does not close what it opened)
                    os.symlink(path, Path(only) / path.name)
                os.environ["NVIMGCODEC_EXTENSIONS_PATH"] = only
                try:
                    from nvidia import nvimgcodec
                finally:  # loaded by now; not for the processes this one starts
                    del os.environ["NVIMGCODEC_EXTENSIONS_PATH"]
                return nvimgcodec
    from nvidia import nvimgcodec

    return nvimgcodec


# nvImageCodec's host threads for a batch (parsing; Huffman decoding in its hybrid backend): a few, not
# its default of one per core, which would compete with the front ends for the cores.
NVIMGCODEC_CPU_THREADS = 4

# nvImageCodec takes its images' memory with cudaMallocAsync from the device's current memory pool,
# whose release threshold is 0 unless set: at each synchronisation (one per batch) the pool hands its
# free memory back to the driver, and the next batch maps it again (~140 MB for 256 decoded 500x375
# images). The engine keeps up to this much in the pool instead, as PyTorch's caching allocator keeps
# its own; ``python -m loadtest.gpu_decode --pool-keep-mib`` measures the difference.
POOL_KEEP_BYTES = 1 << 30
_CUDA_RUNTIME = "libcudart.so.13"  # the CUDA 13 runtime PyTorch's CUDA build has loaded already
_POOL_ATTR_RELEASE_THRESHOLD = 4  # cudaMemPoolAttrReleaseThreshold (driver_types.h)


def keep_pool_memory(device_index: int, keep_bytes: int, runtime: str = _CUDA_RUNTIME) -> str | None:
    """Set the release threshold of ``device_index``'s current CUDA memory pool (the one cudaMallocAsync
    draws from) to ``keep_bytes``: None when set, else why not (no CUDA runtime to call, a CUDA error).
    Device-wide: it holds for whatever else allocates from that pool in the process (PyTorch too, under
    ``PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync``), until set again (each decoder made sets it)."""
    try:
        cudart = ctypes.CDLL(runtime)
    except OSError as exc:
        return f"cannot load the CUDA runtime ({exc})"
    pool = ctypes.c_void_p()
    if error := cudart.cudaDeviceGetMemPool(ctypes.byref(pool), ctypes.c_int(device_index)):
        return f"cudaDeviceGetMemPool failed: CUDA error {error}"
    threshold = ctypes.c_uint64(keep_bytes)
    if error := cudart.cudaMemPoolSetAttribute(
        pool, ctypes.c_int(_POOL_ATTR_RELEASE_THRESHOLD), ctypes.byref(threshold)
    ):
        return f"cudaMemPoolSetAttribute failed: CUDA error {error}"
    return None


def nvimgcodec_decoder(
    device: str,
    fancy_upsampling: bool = True,
    hardware: bool = True,
    hardware_share: float = 1.0,
    cpu_threads: int = NVIMGCODEC_CPU_THREADS,
    pool_keep_bytes: int = POOL_KEEP_BYTES,
) -> DecodeBatch:
    """nvJPEG through nvImageCodec (``nvidia-nvimgcodec-cu13`` with ``nvidia-nvjpeg``), asked to
    interpolate chroma as libjpeg-turbo does (``fancy_upsampling``; False asks it to repeat), or an
    ImportError/RuntimeError saying why it is not available.

    On CUDA only its GPU decoders are allowed: the hardware JPEG decoder first where ``hardware`` and
    the GPU has one, then nvJPEG's CUDA decoders. ``hardware_share``: the fraction of each batch
    offered to the hardware decoder (its ``load_hint``), the rest going to the CUDA decoders as they
    would; 1.0 (the engine's) offers it all. DALI gives it 0.65 or 0.9 by default; which is faster
    here is ``python -m loadtest.gpu_decode --hardware-share``'s to measure, as ``cpu_threads``
    (nvImageCodec's host threads) is ``--cpu-threads``'s, and ``pool_keep_bytes`` (memory its CUDA pool
    keeps between batches, ``POOL_KEEP_BYTES``) is ``--pool-keep-mib``'s. A JPEG they refuse comes back as an exception and goes
    back to a front end's CPU path (the service's decode, with its limits), not to nvImageCodec's own
    CPU decoders. On ``cpu`` the same calls run its libjpeg-turbo decoder (``hardware`` changes nothing
    there), so a CPU host tests this code.
    The decode is ordered on the caller's current stream, as are the frees of its images (their memory
    goes back to the stream they were decoded on): keep using them on that stream. That memory comes
    from CUDA's own pool (cudaMallocAsync), not torch's allocator. Read against nvImageCodec's source
    (v0.8, with 0.9's docstrings), not yet run on a GPU.
    """
    nvimgcodec = import_nvimgcodec()
    dev = torch.device(device)
    on_cuda = dev.type == "cuda"
    if on_cuda:
        device_id = dev.index if dev.index is not None else torch.cuda.current_device()
        kinds = [nvimgcodec.HW_GPU_ONLY] if hardware else []
        kinds += [nvimgcodec.HYBRID_CPU_GPU, nvimgcodec.GPU_ONLY]
    else:
        device_id, kinds = nvimgcodec.NVIMGCODEC_DEVICE_CPU_ONLY, [nvimgcodec.CPU_ONLY]
    if not 0 < hardware_share <= 1:
        raise ValueError(f"hardware_share must be in (0, 1], got {hardware_share}")
    if cpu_threads < 1:
        raise ValueError(f"cpu_threads must be at least 1, got {cpu_threads}")
    if on_cuda and (why := keep_pool_memory(device_id, pool_keep_bytes)) is not None:
        log.warning("nvImageCodec's memory pool returns its memory at every batch: %s", why)
    backends = [
        nvimgcodec.Backend(kind, load_hint=hardware_share if kind == nvimgcodec.HW_GPU_ONLY else 1.0) for kind in kinds
    ]
    # The option is given, never left to the default: it changed from on to off between releases. Each
    # backend "may ignore or honor" it (nvImageCodec's docs): start_jpeg_decoder measures what it got.
    decoder = nvimgcodec.Decoder(
        device_id=device_id,
        max_num_cpu_threads=cpu_threads,
        backends=backends,
        options=f":fancy_upsampling={int(fancy_upsampling)}",
    )
    params = nvimgcodec.DecodeParams(
        apply_exif_orientation=False, color_spec=nvimgcodec.ColorSpec.SRGB, allow_any_depth=False
    )

    def as_chw(image: object) -> torch.Tensor | Exception:
        if image is None:
            return RuntimeError("nvImageCodec could not decode this JPEG")
        # from_dlpack hands torch's current stream to the image, which orders the hand-over on it.
        hwc = torch.from_dlpack(image) if on_cuda else torch.from_numpy(np.asarray(image))
        return hwc.permute(2, 0, 1)  # (H, W, 3) -> (3, H, W), a view

    def decode(data: list[torch.Tensor]) -> Sequence[torch.Tensor | Exception]:
        stream = torch.cuda.current_stream(dev).cuda_stream if on_cuda else 0
        sources = [nvimgcodec.CodeStream(tensor.numpy()) for tensor in data]
        return [as_chw(image) for image in decoder.decode(sources, params=params, cuda_stream=stream)]

    return decode


def decoder_factories() -> dict[str, Callable[[str], DecodeBatch]]:
    """The GPU decoders by name, best first: the engine takes the first that works on its device and
    interpolates chroma as the CPU path does (``start_jpeg_decoder``). nvImageCodec comes twice: with
    its hardware decoder (on GPUs that have one), then without it, should the hardware decoder be the
    one that repeats chroma."""
    return {
        "nvimgcodec": nvimgcodec_decoder,
        "nvimgcodec-no-hw": lambda device: nvimgcodec_decoder(device, hardware=False),
        "torchvision": torchvision_decoder,
    }


def tiny_jpeg() -> bytearray:
    """A 32x24 JPEG: loads the decoder at start-up and warms the engine's GPU path before it is ready."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (32, 24), (120, 80, 40)).save(out, "JPEG")
    return bytearray(out.getvalue())


class JpegDecoder:
    """Encoded JPEGs (host bytes) -> upright (3, crop, crop) uint8 crops on ``device``."""

    def __init__(
        self,
        device: str,
        resize_size: int,
        crop_size: int,
        decode_batch: DecodeBatch,
        group_bytes: int | None = None,
    ) -> None:
        self.device = device
        self.resize_size = resize_size
        self.crop_size = crop_size
        self.decode_batch = decode_batch
        # Decoded bytes resized in one call (see same_size_groups); 0 = one image at a time. By default
        # groups on CUDA, where every call is a few kernel launches from this thread under the GIL,
        # and one by one on the CPU, where a group's float32 copy falls out of the caches (48 images
        # of 500x375, one thread, 2-core AMD EPYC: 190 ms in one group, 74 ms one by one).
        on_cuda = torch.device(device).type == "cuda"
        self.group_bytes = group_bytes if group_bytes is not None else (GROUP_MAX_BYTES if on_cuda else 0)
        self.measured: ChromaDiff | None = None  # its chroma probes, as start_jpeg_decoder measured them
        # Where start_jpeg_decoder found none that interpolates: what whoever decodes with it should log.
        self.warning: str | None = None

    @property
    def chroma(self) -> str:
        """What its chroma probes measured, in words (describe_chroma), for the engine to report."""
        return describe_chroma(self.measured) if self.measured is not None else "chroma not measured"

    @property
    def interpolates_chroma(self) -> bool | None:
        """As the CPU path does, by that measurement (None: not measured)."""
        return self.measured.interpolated if self.measured is not None else None

    def decode(self, jpegs: Sequence[tuple[memoryview, int]]) -> list[torch.Tensor | Exception]:
        """One crop or one exception per (bytes, EXIF orientation), in order.

        On CUDA, upright images of one size are resized and cropped together (``same_size_groups``):
        a batch of photos of one size costs a few kernel launches, not a few per image.
        """
        images = decode_each(self.decode_batch, [torch.frombuffer(buffer, dtype=torch.uint8) for buffer, _ in jpegs])
        out: list[torch.Tensor | Exception] = list(images)
        upright: list[tuple[int, torch.Tensor]] = []
        for i, (image, (_buffer, orientation)) in enumerate(zip(images, jpegs, strict=True)):
            if isinstance(image, Exception):
                continue
            try:
                upright.append((i, apply_exif_orientation_tensor(image, orientation)))
            except (RuntimeError, ValueError) as exc:
                out[i] = exc
        for group in same_size_groups(upright, self.group_bytes):
            crops: Sequence[torch.Tensor | Exception]
            try:
                stacked = torch.stack([image for _, image in group])
                crops = resize_crop_tensor(stacked, self.resize_size, self.crop_size).unbind()
            except (RuntimeError, ValueError) as exc:
                crops = (exc,) * len(group)
            for (i, _), crop in zip(group, crops, strict=True):
                out[i] = crop
        return out


def start_jpeg_decoder(
    device: str,
    resize_size: int,
    crop_size: int,
    names: Sequence[str] | None = None,
    factories: Mapping[str, Callable[[str], DecodeBatch]] | None = None,
) -> tuple[JpegDecoder, str]:
    """(decoder, its name): the first of ``factories`` (default ``decoder_factories()``; or of ``names``
    among them) that turns a test JPEG into a crop on ``device`` (which also loads nvJPEG now, not on a
    request) and decodes the chroma probes (one batch) each within ``CHROMA_THRESHOLD`` of PIL's
    pixels; where none is that close, the first that decodes, with the warning its user should log in
    ``decoder.warning`` (the engine logs it only where it decodes with it: ``--decode gpu``). ``decoder.chroma`` says what its probes
    measured. A RuntimeError giving each one's failure where none decodes."""
    passed_over: list[str] = []  # each candidate not taken, and why, in order
    errors: list[str] = []  # those that did not decode
    repeating: list[tuple[str, JpegDecoder, ChromaDiff]] = []  # those that decode, chroma unlike the CPU path's
    factories = decoder_factories() if factories is None else factories
    for name in names if names is not None else list(factories):
        try:
            decoder = JpegDecoder(device, resize_size, crop_size, factories[name](device))
            (probe,) = decoder.decode([(memoryview(tiny_jpeg()), 1)])
            if isinstance(probe, Exception):  # the decoder answers per image: a failure comes back, not up
                raise probe
            if tuple(probe.shape) != (3, crop_size, crop_size):
                raise RuntimeError(f"a test JPEG came back as {tuple(probe.shape)}")
            diff = chroma_diff(decoder.decode_batch)
        except Exception as exc:  # whatever fails (a missing extension raises AttributeError): the next one
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
            passed_over.append(errors[-1])
            continue
        decoder.measured = diff
        if diff.interpolated:
            if passed_over:
                log.warning("GPU JPEG decoding by %s, because %s", name, "; ".join(passed_over))
            return decoder, name
        repeating.append((name, decoder, diff))
        passed_over.append(f"{name}: {decoder.chroma}")
    if not repeating:
        raise RuntimeError("; ".join(errors))
    name, decoder, _ = repeating[0]
    decoder.warning = (
        f"GPU JPEG decoding by {name}, the first that decodes, though none here interpolates chroma as the CPU "
        f"path does (chroma probes, the worst's levels of 255 from PIL's pixels, threshold {CHROMA_THRESHOLD:g}: "
        + ", ".join(f"{other} {diff.levels:.1f} ({diff.worst})" for other, _, diff in repeating)
        + '): on saturated colour its crops will differ from the CPU path\'s (docs/gpu.md, "JPEG chroma on the GPU")'
        + "".join(f"; {error}" for error in errors)
    )
    return decoder, name
