"""What nvJPEG's default chroma upsampling would do to the GPU path's parity with the PIL path, on the CPU.

    pip install 'PyTurboJPEG<2'   # and libjpeg-turbo's libturbojpeg (Debian: apt install libturbojpeg0)
    python scripts/measure_chroma_upsampling.py

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

import io
import pathlib
import sys
import tempfile

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import tests.unit.test_preprocessing_parity as parity
from model.preprocessing import normalize_batch, normalize_tensor
from model.weights import load_model
from service.preprocess import preprocess_uint8
from tests.synthetic import fitted_checkpoint, write_images


def main() -> int:
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


if __name__ == "__main__":
    sys.exit(main())
