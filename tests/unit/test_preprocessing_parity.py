"""The tensor path of ``model.preprocessing`` (what the GPU JPEG path runs after nvJPEG) against the PIL
path the service runs today, on CPU tensors here and on CUDA tensors where there is a GPU.

Parity floor (issue 13): on the repo's photos, the hostile corpus and generated images of many sizes,
aspect ratios, modes and EXIF orientations, the uint8 crops before normalisation differ by at most
1.5/255 on average per image, and the fitted-head model of tests/synthetic.py (answers that follow the
image, unlike an untrained AlexNet's) gives the same top-5 set on >= 99% of the images.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

import model.preprocessing as preprocessing
from model.preprocessing import (
    apply_exif_orientation_tensor,
    exif_orientation,
    normalize_batch,
    normalize_tensor,
    resize_crop_tensor,
)
from model.transforms import EvalTransform
from service.errors import ServiceError
from service.gpu_decode import start_jpeg_decoder
from service.preprocess import PreprocessConfig, decode, preprocess_uint8
from tests.conftest import make_image
from tests.synthetic import NUM_CLASSES
from tests.synthetic import make_image as class_image

REPO = Path(__file__).resolve().parents[2]
CONFIG = PreprocessConfig()  # as served: large JPEGs decoded at a reduced DCT size
MEAN_DIFF_FLOOR = 1.5  # levels of 255, per image
TOP5_FLOOR = 0.99
CUDA = torch.cuda.is_available()
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="no CUDA GPU on this host")]),
]
# (width, height): tiny, odd, square, around the 224/256 sizes, elongated (some past MAX_RESIZED_SIDE
# after the resize, so the crop-region path runs), and large enough for JPEG draft decoding.
SIZES = [
    (1, 1), (2, 3), (3, 2), (5, 7), (16, 16), (31, 17), (1, 100), (100, 1), (13, 999), (999, 13),
    (224, 224), (225, 223), (255, 257), (256, 256), (257, 256), (300, 200), (333, 777), (375, 500),
    (500, 375), (511, 513), (640, 480), (480, 640), (800, 600), (1023, 767), (1280, 720), (720, 1280),
    (1600, 1200), (2000, 1500), (4000, 200), (200, 4000), (6000, 90), (2, 700),
]  # fmt: skip
EXIF_SIZE = (301, 203)


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[preprocessing.EXIF_ORIENTATION_TAG] = orientation
    return exif.tobytes()


def _cases() -> list[Case]:
    rng = np.random.default_rng(2024)
    cases = [Case(f"photo/{p.name}", p.read_bytes()) for p in sorted((REPO / "loadtest" / "corpus").glob("*.jpg"))]
    for path in sorted((REPO / "tests" / "corpus" / "nasty").iterdir()):
        try:
            preprocess_uint8(path.read_bytes(), CONFIG)
        except ServiceError:
            continue  # refused by the service: nothing to compare
        cases.append(Case(f"nasty/{path.name}", path.read_bytes()))
    for i, (w, h) in enumerate(SIZES):
        for k in range(3):  # three classes per size, as JPEG, PNG and grayscale JPEG
            label = (3 * i + k) % NUM_CLASSES
            image = class_image(label, rng).resize((w, h), Image.Resampling.LANCZOS)
            fmt, mode = (("JPEG", "RGB"), ("PNG", "RGB"), ("JPEG", "L"))[k]
            data = _encode(image.convert(mode), fmt, **({"quality": 90} if fmt == "JPEG" else {}))
            cases.append(Case(f"class{label}/{w}x{h}/{fmt}-{mode}", data))
    for orientation in range(1, 9):
        for label in (orientation % NUM_CLASSES, (orientation + 4) % NUM_CLASSES):
            image = class_image(label, rng).resize(EXIF_SIZE, Image.Resampling.LANCZOS)
            data = _encode(image, "JPEG", quality=90, exif=_exif(orientation))
            cases.append(Case(f"class{label}/exif{orientation}", data))
    for seed, (w, h) in enumerate([(500, 375), (375, 500), (64, 48), (1200, 900)]):
        cases.append(Case(f"photo-like/{w}x{h}", make_image(w, h, seed=seed)))
    return cases


@pytest.fixture(scope="module")
def cases() -> list[Case]:
    """~135 encoded images, built once per module (a few seconds)."""
    return _cases()


def _tensor_input(data: bytes) -> tuple[torch.Tensor, int]:
    """What nvJPEG hands the engine: every pixel as (3, H, W) uint8, EXIF not applied, and the header's
    orientation. Formats nvJPEG does not take (PNG, CMYK, ...) get the service's own CPU decode, upright."""
    with Image.open(io.BytesIO(data)) as image:
        if image.format == "JPEG" and image.mode in ("RGB", "L"):
            orientation = exif_orientation(image)
            pixels = np.array(image.convert("RGB"))
            return torch.from_numpy(pixels).permute(2, 0, 1).contiguous(), orientation
    pixels = np.array(decode(data, PreprocessConfig(jpeg_draft=False)))
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous(), 1


def _decode_on_cuda(datas: list[bytes]) -> list[torch.Tensor | None]:
    """The GPU decoder the engine takes under --decode gpu (by its start-up chroma probe: nvImageCodec,
    else torchvision's nvJPEG; --decode auto takes it only where its chroma matches the CPU path's),
    which must start on a CUDA host; None for what the front end sends to the CPU path instead. Nearly every JPEG it is given must decode: else this test would compare the CPU path with
    itself."""
    decoder, name = start_jpeg_decoder("cuda", CONFIG.resize_size, CONFIG.crop_size)
    print(f"GPU JPEG decoder: {name} ({decoder.chroma})")  # shown when the test fails
    out: list[torch.Tensor | None] = []
    given = 0
    for data in datas:
        with Image.open(io.BytesIO(data)) as image:
            takes = image.format == "JPEG" and image.mode in ("RGB", "L")
        decoded = decoder.decode_batch([torch.frombuffer(bytearray(data), dtype=torch.uint8)])[0] if takes else None
        given += takes
        out.append(decoded if isinstance(decoded, torch.Tensor) else None)  # else the engine uses the CPU
    decoded_on_gpu = sum(image is not None for image in out)
    assert decoded_on_gpu >= 0.8 * given, f"{name} decoded {decoded_on_gpu} of the {given} JPEGs it was given"
    return out


def tensor_crops(datas: list[bytes], device: str) -> torch.Tensor:
    """(N, 3, 224, 224) uint8 on ``device``: the tensor path, nvJPEG-decoded on CUDA where available."""
    on_gpu = _decode_on_cuda(datas) if device == "cuda" else [None] * len(datas)
    crops = []
    for data, decoded in zip(datas, on_gpu, strict=True):
        image, orientation = _tensor_input(data)
        if decoded is not None:
            image = decoded
        upright = apply_exif_orientation_tensor(image.to(device), orientation)
        crops.append(resize_crop_tensor(upright, CONFIG.resize_size, CONFIG.crop_size))
    return torch.stack(crops)


@pytest.fixture(scope="module")
def fitted_model(tmp_path_factory) -> torch.nn.Module:
    """tests/synthetic.py's AlexNet with its head fitted in closed form to the 8 synthetic classes."""
    from model.weights import load_model
    from tests.synthetic import fitted_checkpoint, write_images

    root = tmp_path_factory.mktemp("fitted-head")
    checkpoint = fitted_checkpoint(root / "checkpoint.pt", write_images(root / "fit", 12, seed=3))
    return load_model(checkpoint).model.eval()


def _top5(model: torch.nn.Module, batch: torch.Tensor) -> list[frozenset[int]]:
    with torch.inference_mode():
        logits = torch.cat([model(chunk) for chunk in batch.split(32)])
    return [frozenset(row.tolist()) for row in logits.topk(5, dim=1).indices]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # the hostile corpus's broken EXIF blocks
@pytest.mark.parametrize("device", DEVICES)
def test_tensor_path_matches_the_pil_path(device, cases, fitted_model):
    datas = [case.data for case in cases]
    pil = np.stack([preprocess_uint8(data, CONFIG) for data in datas])  # (N, 224, 224, 3)
    ours = tensor_crops(datas, device)  # (N, 3, 224, 224)
    assert ours.dtype == torch.uint8 and ours.device.type == device
    reference = torch.from_numpy(pil).permute(0, 3, 1, 2)
    mean_diff = (ours.cpu().int() - reference.int()).abs().float().mean(dim=(1, 2, 3))  # (N,) levels
    worst = int(mean_diff.argmax())
    pil_top5 = _top5(fitted_model, torch.from_numpy(normalize_batch(pil)))
    our_top5 = _top5(fitted_model, normalize_tensor(ours).cpu())
    disagree = [case.name for case, a, b in zip(cases, pil_top5, our_top5, strict=True) if a != b]
    agreement = 1 - len(disagree) / len(cases)
    print(
        f"\n{device}: {len(cases)} images; mean |diff| per image: worst {mean_diff.max():.3f}/255 "
        f"({cases[worst].name}), median {mean_diff.median():.3f}/255; max |diff| {(ours.cpu().int() - reference.int()).abs().max()}"
        f"/255; top-5 sets identical on {agreement:.1%} (differ: {disagree})"
    )
    over = {case.name: round(float(d), 3) for case, d in zip(cases, mean_diff, strict=True) if d > MEAN_DIFF_FLOOR}
    assert not over, f"mean |diff| over {MEAN_DIFF_FLOOR}/255: {over}"
    assert agreement >= TOP5_FLOOR, f"top-5 sets differ on {disagree}"


def test_the_cases_cover_what_the_floor_is_about(cases):
    names = [case.name for case in cases]
    assert sum(n.startswith("photo/") for n in names) == 3
    assert sum(n.startswith("nasty/") for n in names) >= 10
    assert {f"exif{o}" for o in range(1, 9)} <= {n.rsplit("/", 1)[-1] for n in names}
    assert any("-L" in n for n in names) and any("PNG" in n for n in names)
    big = [(w, h) for w, h in SIZES if max(preprocessing.resized_size(w, h, 256)) > preprocessing.MAX_RESIZED_SIDE]
    assert len(big) >= 4  # the crop-region path is among them
    assert len(cases) >= 100  # so the 99% floor forgives one near-tie in a hundred, not a pattern


def _exif_png(pixels: np.ndarray, orientation: int) -> Image.Image:
    return Image.open(io.BytesIO(_encode(Image.fromarray(pixels), "PNG", exif=_exif(orientation))))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("orientation", range(10))
def test_exif_orientation_tensor_turns_the_image_as_pil_does(orientation, device):
    pixels = np.random.default_rng(orientation).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    image = _exif_png(pixels, orientation)
    expected = np.asarray(ImageOps.exif_transpose(image))  # PIL's own reading and turning
    chw = torch.from_numpy(pixels).permute(2, 0, 1).to(device)
    got = apply_exif_orientation_tensor(chw, exif_orientation(image))
    np.testing.assert_array_equal(got.permute(1, 2, 0).cpu().numpy(), expected)
    assert exif_orientation(image) == (orientation if 1 <= orientation <= 8 else 1)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_reads_jpeg_headers_without_decoding(orientation):
    data = _encode(Image.new("RGB", (8, 4)), "JPEG", exif=_exif(orientation))
    assert exif_orientation(data) == orientation
    assert exif_orientation(_encode(Image.new("RGB", (8, 4)), "JPEG")) == 1


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size", [(500, 375), (3, 700), (1000, 61), (61, 1000), (257, 4000)])
def test_the_crop_region_path_matches_the_full_resize(monkeypatch, device, size):
    image = torch.from_numpy(np.random.default_rng(size[0]).integers(0, 256, (3, size[1], size[0]), np.uint8))
    full = resize_crop_tensor(image.to(device)).int()
    monkeypatch.setattr(preprocessing, "MAX_RESIZED_SIDE", 0)
    region = resize_crop_tensor(image.to(device)).int()
    assert (full - region).abs().max() <= 1 and (full != region).float().mean() < 0.01


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size", [(500, 375), (256, 300), (224, 224), (7, 5), (257, 4000)])
def test_a_batch_of_one_size_gives_each_image_exactly_its_own_crop(device, size):
    """Resize + crop of (N, 3, H, W) at once (the GPU path's same-size groups) is bit for bit each image
    alone: full resize, no resize (256 short side), upscaling, and the crop-region path."""
    rng = np.random.default_rng(size[0])
    images = torch.from_numpy(rng.integers(0, 256, (5, 3, size[1], size[0]), np.uint8)).to(device)
    together = resize_crop_tensor(images)
    assert together.shape == (5, 3, 224, 224) and together.dtype == torch.uint8 and together.is_contiguous()
    assert torch.equal(together, torch.stack([resize_crop_tensor(image) for image in images]))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(3, 1, 40000), (3, 40000, 1), (3, 2, 300000)])
def test_extreme_aspect_ratios_resample_only_the_crop_region(device, shape):
    """A 1x40000 image would resize to 256x10240000 (10 G floats); only the crop's region is made."""
    image = torch.empty(shape, dtype=torch.uint8, device=device)
    image[0], image[1], image[2] = 200, 100, 50
    crop = resize_crop_tensor(image)
    assert crop.shape == (3, 224, 224) and crop.dtype == torch.uint8
    assert (crop[:, 0, 0] == torch.tensor([200, 100, 50], device=device)).all() and (crop == crop[:, :1, :1]).all()


def test_resize_crop_tensor_refuses_what_it_cannot_take():
    with pytest.raises(ValueError, match="uint8"):
        resize_crop_tensor(torch.zeros(3, 10, 10))
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        resize_crop_tensor(torch.zeros(10, 10, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        resize_crop_tensor(torch.zeros(2, 10, 10, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="crop_size"):
        resize_crop_tensor(torch.zeros(3, 10, 10, dtype=torch.uint8), 224, 256)


@pytest.mark.parametrize("device", DEVICES)
def test_normalize_tensor_is_the_numpy_path_in_either_layout_and_into_a_buffer(device):
    nhwc = np.random.default_rng(1).integers(0, 256, size=(4, 224, 224, 3), dtype=np.uint8)
    expected = torch.from_numpy(normalize_batch(nhwc)).to(device)
    exact = device == "cpu"  # CUDA's float32 division is IEEE too, but a rounding step is no failure there
    check = torch.equal if exact else (lambda a, b: torch.allclose(a, b, rtol=0, atol=1e-6))
    as_nhwc = torch.from_numpy(nhwc).to(device)
    as_nchw = as_nhwc.permute(0, 3, 1, 2).contiguous()
    assert check(normalize_tensor(as_nchw), expected)
    assert check(normalize_tensor(as_nhwc, layout="NHWC"), expected)
    assert check(normalize_tensor(as_nhwc.permute(0, 3, 1, 2)), expected)  # a strided view works as is
    buffer = torch.full((6, 3, 224, 224), float("nan"), device=device).contiguous(memory_format=torch.channels_last)
    assert normalize_tensor(as_nhwc, out=buffer[:4], layout="NHWC").data_ptr() == buffer.data_ptr()
    assert check(buffer[:4], expected) and buffer[4:].isnan().all()
    half = torch.empty((4, 3, 224, 224), dtype=torch.float16, device=device)
    assert normalize_tensor(as_nchw, out=half) is half
    assert torch.equal(half, expected.half()) and torch.equal(normalize_tensor(as_nchw, dtype=torch.float16), half)


def test_normalize_tensor_refuses_what_it_cannot_take():
    batch = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match="layout"):
        normalize_tensor(batch, layout="CHW")
    with pytest.raises(ValueError, match="uint8"):
        normalize_tensor(batch.float())
    with pytest.raises(ValueError, match="3 channels"):
        normalize_tensor(batch, layout="NHWC")
    with pytest.raises(ValueError, match="out must be"):
        normalize_tensor(batch, out=torch.empty(2, 3, 8, 9))
    with pytest.raises(ValueError, match="out must be"):
        normalize_tensor(batch, out=torch.empty(2, 3, 8, 8, dtype=torch.int32))


def test_training_evaluation_crops_are_the_service_crops():
    """model/transforms.py's EvalTransform is the same implementation, not a second one that agrees."""
    for seed, size in enumerate([(500, 375), (257, 1000), (333, 777), (224, 224)]):
        data = make_image(*size, seed=seed, fmt="PNG")
        ours = EvalTransform(256, 224)(Image.open(io.BytesIO(data)))
        np.testing.assert_array_equal(ours.permute(1, 2, 0).numpy(), preprocess_uint8(data, CONFIG))
