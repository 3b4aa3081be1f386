"""The engine's GPU JPEG decoders (service.gpu_decode) on a CUDA GPU, pixel for pixel against PIL's decode
(the CPU path), with the decode queued on a stream of its own as the engine's prepare thread does.

nvImageCodec (chroma interpolated, as libjpeg-turbo does) must stay within 1.5/255 on average of PIL's
pixels on every image; torchvision's nvJPEG (chroma repeated) is expected to be further off on saturated
4:2:0 colour, the reason the engine prefers nvImageCodec (docs/gpu.md, "JPEG chroma on the GPU"). Each
decoder is skipped where it does not import; one that imports but decodes nothing fails. The engine's
start-up probe of chroma (service.chroma_probe.chroma_diff) is checked here against nvJPEG itself.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from service.chroma_probe import CHROMA_THRESHOLD, chroma_diff
from service.decode_batch import decode_each
from service.gpu_decode import decoder_factories
from tests.conftest import make_image

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this host"),
]
FLOOR = 1.5  # mean |difference| per image, levels of 255: the parity floor of issue 13, on whole images here


def _saturated(subsampling: int, seed: int) -> bytes:
    """Noise scaled up 3x: strong colour edges, where repeated and interpolated chroma differ most."""
    pixels = np.random.default_rng(seed).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).resize((360, 270)).save(out, "JPEG", quality=90, subsampling=subsampling)
    return out.getvalue()


def _grey(seed: int) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(make_image(320, 240, seed=seed))).convert("L").save(out, "JPEG", quality=90)
    return out.getvalue()


IMAGES = {
    "photo 4:2:0": make_image(500, 375, seed=1),
    "saturated 4:2:0": _saturated(2, seed=2),
    "saturated 4:2:2": _saturated(1, seed=3),
    "saturated 4:4:4": _saturated(0, seed=4),
    "grey": _grey(seed=5),
}


def _mean_diffs(name: str, capsys) -> dict[str, float]:
    try:
        decode = decoder_factories()[name]("cuda")
    except ImportError as exc:
        pytest.skip(f"{name} does not import here: {exc}")
    datas = list(IMAGES.values())
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        decoded = decode([torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in datas])
        failed = {label: out for label, out in zip(IMAGES, decoded, strict=True) if isinstance(out, Exception)}
        assert not failed, f"{name} did not decode: {failed}"
        host = [out.permute(1, 2, 0).cpu().numpy() for out in decoded]  # on the decode stream, as the engine reads
    diffs = {}
    for (label, data), pixels in zip(IMAGES.items(), host, strict=True):
        with Image.open(io.BytesIO(data)) as image:
            reference = np.asarray(image.convert("RGB"))
        assert pixels.shape == reference.shape and pixels.dtype == np.uint8, (label, pixels.shape, reference.shape)
        diffs[label] = float(np.abs(pixels.astype(np.int16) - reference).mean())
    with capsys.disabled():  # into gpu_check's log even when the test passes: the figures are the point
        print(f"\n{name} ({torch.cuda.get_device_name()}): mean |diff| vs PIL per image: {diffs}")
    return diffs


def test_nvimgcodec_decodes_as_the_cpu_path_does_within_the_floor(capsys):
    diffs = _mean_diffs("nvimgcodec", capsys)
    assert all(diff <= FLOOR for diff in diffs.values()), diffs


def test_torchvision_repeats_chroma_where_nvimgcodec_interpolates(capsys):
    """What keeps torchvision second: on saturated 4:2:0 colour it is further from PIL than nvImageCodec.
    Should torchvision come as close, the order in service.gpu_decode.decoder_factories can be revisited."""
    theirs = _mean_diffs("torchvision", capsys)
    ours = _mean_diffs("nvimgcodec", capsys)
    assert theirs["saturated 4:2:0"] > ours["saturated 4:2:0"] + 1.0, (theirs, ours)
    assert theirs["grey"] <= FLOOR, theirs  # no chroma: no difference in kind


def test_the_start_up_chroma_probe_passes_nvimgcodec_and_not_torchvisions_default_nvjpeg(capsys):
    """The probes the engine chooses its decoder by, calibrated on nvImageCodec's CPU decoder (docs/gpu.md),
    on each GPU decoder: nvImageCodec, with and without its hardware decoder, under CHROMA_THRESHOLD on
    every probe it decodes (each probe kind may go to another of its backends); torchvision's nvJPEG
    (chroma repeated) over it on its worst. Each probe's figure is printed (a refused one is named: a
    front end's CPU path decodes it); a decoder that does not import is printed, not measured."""
    measured: dict[str, object] = {}
    diffs = {}
    for name, factory in decoder_factories().items():
        try:
            diffs[name] = chroma_diff(factory("cuda"))
            figures = {probe: round(levels, 2) for probe, levels in diffs[name].by_probe.items()}
            measured[name] = {**figures, "refused": diffs[name].refused} if diffs[name].refused else figures
        except ImportError as exc:
            measured[name] = f"does not import: {exc}"
        except Exception as exc:  # printed with the others' figures, then failed
            measured[name] = f"failed: {type(exc).__name__}: {exc}"
    with capsys.disabled():
        print(f"\nchroma probes ({torch.cuda.get_device_name()}), levels of 255 from PIL's pixels: {measured}")
    assert not [diff for diff in measured.values() if str(diff).startswith("failed")], measured
    assert all(diff.interpolated for name, diff in diffs.items() if name.startswith("nvimgcodec")), measured
    assert "torchvision" in diffs and diffs["torchvision"].levels > CHROMA_THRESHOLD, measured


def test_a_jpeg_broken_mid_scan_fails_on_the_gpu_as_on_the_cpu(capsys):
    """A sound header and end, a marker in the middle of the scan: PIL refuses it (400 corrupt_image on
    the CPU route), so the GPU decoders must answer it with an exception in its place (the engine then
    declines it and its front end refuses it), not pixels filled in, which would answer 200. A file cut
    short never reaches them (preprocess.inspect_jpeg keeps it on the CPU path); printed for the record."""
    whole = make_image(500, 375, seed=7)
    broken = whole[: len(whole) // 2] + b"\xff\xc0" + whole[len(whole) // 2 + 2 :]
    cut = whole[: len(whole) // 2]
    answers = {}
    for name, factory in decoder_factories().items():
        try:
            decode = factory("cuda")
        except ImportError as exc:
            answers[name] = f"does not import: {exc}"
            continue
        out = decode_each(decode, [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in (broken, cut)])
        answers[name] = [type(o).__name__ if isinstance(o, Exception) else "pixels" for o in out]
    with capsys.disabled():
        print(f"\nbroken mid-scan, cut short ({torch.cuda.get_device_name()}): {answers}")
    wrong = {name: answer for name, answer in answers.items() if isinstance(answer, list) and answer[0] == "pixels"}
    assert not wrong, f"decoded a broken JPEG into pixels where PIL refuses it: {wrong}"
