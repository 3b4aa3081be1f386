"""What nvJPEG's default chroma upsampling would do to the GPU path's parity with the PIL path, on the CPU,
and the calibration of the engine's start-up chroma probes.

    pip install 'PyTurboJPEG<2'   # and libjpeg-turbo's libturbojpeg (Debian: apt install libturbojpeg0)
    python scripts/measure_chroma_upsampling.py
    python scripts/measure_chroma_upsampling.py --only probes   # needs nvidia-nvimgcodec-cu13, not turbojpeg

Probes (``service.chroma_probe.CHROMA_PROBES``): each probe's mean |diff| from PIL's pixels
(``chroma_diff``) on nvImageCodec's CPU decoder (libjpeg-turbo) with ``fancy_upsampling=1`` and ``=0``
(chroma repeated), against ``CHROMA_THRESHOLD``, and what the probes cost: building them (once per
process), PIL's reference pixels of them (decoded once) and one ``chroma_diff`` (a candidate's share of
the engine's start-up), best of 5.

Parity:

``torchvision.io.decode_jpeg(..., device="cuda")`` creates nvJPEG with its default flags, which
upsample the chroma of 4:2:0 and 4:2:2 JPEGs by repeating pixels; libjpeg-turbo (PIL, torchvision's
CPU decoder) interpolates ("fancy upsampling"). This runs the parity test's cases
(tests/unit/test_preprocessing_parity.py: the repo's photos, the hostile corpus, generated images)
through the tensor path with each JPEG decoded by libjpeg-turbo twice: as PIL does, and with
TJFLAG_FASTUPSAMPLE (pixel repetition, standing in for nvJPEG), and prints the parity figures of each
against the PIL path: mean |diff| per image in levels of 255, and top-5 agreement of the fitted-head
model. A measurement, not a test: a GPU host measures nvJPEG itself (the parity test on CUDA).
"""

from __future__ import annotations

import argparse
import io
import pathlib
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import tests.unit.test_preprocessing_parity as parity
from model.preprocessing import normalize_batch, normalize_tensor
from model.weights import load_model
from service import chroma_probe, gpu_decode
from service.preprocess import preprocess_uint8
from tests.synthetic import fitted_checkpoint, write_images


def _best_ms(call: object, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def measure_probes() -> int:
    """The start-up chroma probes on nvImageCodec's CPU decoder, interpolating and repeating."""
    try:
        decoders = {fancy: gpu_decode.nvimgcodec_decoder("cpu", fancy_upsampling=fancy) for fancy in (True, False)}
    except (ImportError, RuntimeError) as exc:
        print(f"the probes need nvidia-nvimgcodec-cu13: {exc}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    jpegs = chroma_probe.chroma_probe_jpegs()
    built_ms = (time.perf_counter() - start) * 1e3
    start = time.perf_counter()
    chroma_probe.chroma_probe_references()
    references_ms = (time.perf_counter() - start) * 1e3
    diffs = {fancy: chroma_probe.chroma_diff(decode) for fancy, decode in decoders.items()}
    threshold = chroma_probe.CHROMA_THRESHOLD
    print(f"chroma probes, mean |diff| from PIL's pixels in levels of 255 (threshold {threshold:g}):")
    print(f"{'probe':<26} {'bytes':>7} {'fancy_upsampling=1':>19} {'=0':>6}  separated")
    for name, data in jpegs.items():
        on, off = diffs[True].by_probe[name], diffs[False].by_probe[name]
        verdict = "yes" if on < threshold < off else "NO"
        print(f"{name:<26} {len(data):>7} {on:>19.2f} {off:>6.1f}  {verdict} ({off / threshold:.1f}x the threshold)")
    chroma_diff_ms = _best_ms(lambda: chroma_probe.chroma_diff(decoders[True]))
    rebuilt_ms = _best_ms(chroma_probe.chroma_probe_jpegs.__wrapped__)
    print(
        f"cost: built in {built_ms:.0f} ms (first call, once per process; {rebuilt_ms:.0f} ms warm), "
        f"{sum(map(len, jpegs.values())) / 1e6:.2f} MB; PIL's reference pixels decoded once in "
        f"{references_ms:.0f} ms; one chroma_diff {chroma_diff_ms:.0f} ms (the decode in one batch, compared)"
    )
    separated = all(diffs[True].by_probe[name] < threshold < diffs[False].by_probe[name] for name in jpegs)
    return 0 if separated else 1


def measure_parity() -> int:
    """The parity test's images through the tensor path, chroma interpolated and repeated by libjpeg-turbo."""
    try:
        from turbojpeg import TJFLAG_FASTUPSAMPLE, TJPF_RGB, TurboJPEG

        turbo = TurboJPEG()
    except (ImportError, RuntimeError, OSError) as exc:
        print(f"needs PyTurboJPEG<2 and libturbojpeg: {exc}", file=sys.stderr)
        return 2
    cases = parity._cases()
    datas = [case.data for case in cases]
    with tempfile.TemporaryDirectory() as root:
        fit = write_images(pathlib.Path(root) / "fit", 12, seed=3)
        model = load_model(fitted_checkpoint(pathlib.Path(root) / "checkpoint.pt", fit)).model.eval()
    pil = np.stack([preprocess_uint8(data, parity.CONFIG) for data in datas])
    reference = torch.from_numpy(pil).permute(0, 3, 1, 2).int()
    pil_top5 = parity._top5(model, torch.from_numpy(normalize_batch(pil)))
    pil_input = parity._tensor_input
    print(f"{len(cases)} images, against the PIL path; floor: mean |diff| <= {parity.MEAN_DIFF_FLOOR}/255 per image,")
    print(f"top-5 sets identical on >= {parity.TOP5_FLOOR:.0%}")
    for name, flags in (
        ("interpolated chroma (libjpeg-turbo, PIL)", 0),
        ("repeated chroma (nvJPEG's default)", TJFLAG_FASTUPSAMPLE),
    ):

        def decoded(data: bytes, flags: int = flags) -> tuple[torch.Tensor, int]:
            with Image.open(io.BytesIO(data)) as image:
                if image.format == "JPEG" and image.mode in ("RGB", "L"):
                    pixels = np.ascontiguousarray(turbo.decode(data, pixel_format=TJPF_RGB, flags=flags))
                    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous(), parity.exif_orientation(image)
            return pil_input(data)

        parity._tensor_input = decoded
        try:
            crops = parity.tensor_crops(datas, "cpu")
        finally:
            parity._tensor_input = pil_input
        diff = (crops.int() - reference).abs().float().mean(dim=(1, 2, 3))
        top5 = parity._top5(model, normalize_tensor(crops))
        same = sum(a == b for a, b in zip(pil_top5, top5, strict=True)) / len(cases)
        over = int((diff > parity.MEAN_DIFF_FLOOR).sum())
        print(
            f"{name:42s} mean |diff| median {diff.median():.2f}, worst {diff.max():.2f} "
            f"({cases[int(diff.argmax())].name}); over the floor: {over}; top-5 identical {same:.1%}"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--only", choices=("probes", "parity"), default=None, help="run one measurement (default: both)"
    )
    args = parser.parse_args(argv)
    status = 0
    if args.only in (None, "probes"):
        status = max(status, measure_probes())
    if args.only in (None, "parity"):
        status = max(status, measure_parity())
    return status


if __name__ == "__main__":
    sys.exit(main())
