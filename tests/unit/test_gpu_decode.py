"""The engine's GPU JPEG decoder (service.gpu_decode) on the CPU, with PIL standing in for nvJPEG: images
of one size are resized in groups, and every crop is the one that image gets alone."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from service import gpu_decode
from service.gpu_decode import GROUP_MAX_BYTES, JpegDecoder, same_size_groups
from tests.conftest import make_image
from tests.fakes import pil_decode


def _turned(width: int, height: int, orientation: int, seed: int) -> bytes:
    """A JPEG stored with EXIF ``orientation``."""
    image = Image.open(io.BytesIO(make_image(width, height, seed=seed)))
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    image.save(out, "JPEG", quality=95, exif=exif)
    return out.getvalue()


def test_images_are_grouped_by_shape_in_order_of_first_sight_and_cut_by_bytes():
    a, b = torch.zeros(3, 4, 5, dtype=torch.uint8), torch.zeros(3, 5, 4, dtype=torch.uint8)
    images = [(0, a), (1, b), (2, a), (3, a), (4, b), (5, a.float())]
    assert [[i for i, _ in g] for g in same_size_groups(images)] == [[0, 2, 3], [1, 4], [5]]
    assert [[i for i, _ in g] for g in same_size_groups(images, 2 * 60)] == [[0, 2], [3], [1, 4], [5]]
    assert [[i for i, _ in g] for g in same_size_groups(images, 0)] == [[0], [2], [3], [1], [4], [5]]
    assert same_size_groups([]) == []


def test_the_default_groups_on_cuda_and_goes_one_by_one_on_the_cpu():
    assert JpegDecoder("cuda:0", 256, 224, pil_decode).group_bytes == GROUP_MAX_BYTES
    assert JpegDecoder("cpu", 256, 224, pil_decode).group_bytes == 0
    assert JpegDecoder("cpu", 256, 224, pil_decode, group_bytes=1 << 20).group_bytes == 1 << 20


def test_grouped_crops_equal_one_by_one_with_turns_failures_and_one_resize_per_group(monkeypatch):
    jpegs = [
        (make_image(500, 375, seed=1), 1),
        (make_image(375, 500, seed=2), 1),
        (_turned(375, 500, 6, seed=3), 6),  # upright it is 500x375: joins the first group
        (b"\xff\xd8\xff not a JPEG", 1),
        (make_image(500, 375, seed=4), 1),
        (make_image(640, 480, seed=5), 3),
    ]
    items = [(memoryview(bytearray(data)), orientation) for data, orientation in jpegs]
    calls = []
    resize = gpu_decode.resize_crop_tensor

    def counting_resize(image, *args):
        calls.append(tuple(image.shape))
        return resize(image, *args)

    monkeypatch.setattr(gpu_decode, "resize_crop_tensor", counting_resize)
    grouped = JpegDecoder("cpu", 256, 224, pil_decode, group_bytes=GROUP_MAX_BYTES).decode(items)
    assert calls == [(3, 3, 375, 500), (1, 3, 500, 375), (1, 3, 480, 640)]
    calls.clear()
    alone = JpegDecoder("cpu", 256, 224, pil_decode).decode(items)
    assert len(calls) == 5 and all(shape[0] == 1 for shape in calls)
    assert isinstance(grouped[3], RuntimeError) and isinstance(alone[3], RuntimeError)
    for i in (0, 1, 2, 4, 5):
        assert grouped[i].shape == (3, 224, 224) and torch.equal(grouped[i], alone[i]), i
    assert not torch.equal(grouped[0], grouped[2])


def test_a_group_that_cannot_be_resized_fails_only_its_own_images(monkeypatch):
    resize = gpu_decode.resize_crop_tensor

    def refuses_portrait(image, *args):
        if image.shape[-2] > image.shape[-1]:
            raise RuntimeError("CUDA out of memory")
        return resize(image, *args)

    monkeypatch.setattr(gpu_decode, "resize_crop_tensor", refuses_portrait)
    items = [
        (memoryview(bytearray(make_image(*size, seed=i))), 1)
        for i, size in enumerate([(500, 375), (375, 500), (375, 500)])
    ]
    out = JpegDecoder("cpu", 256, 224, pil_decode, group_bytes=GROUP_MAX_BYTES).decode(items)
    assert out[0].shape == (3, 224, 224)
    assert [str(e) for e in out[1:]] == ["CUDA out of memory"] * 2


def test_the_decode_benchmark_measures_every_path_at_every_batch_size():
    from loadtest.gpu_decode import rows

    jpegs = [make_image(500, 375, seed=1), make_image(300, 200, seed=2)]
    measured = rows("cpu", pil_decode, jpegs, [3, 4], seconds=0.01)
    assert [(r["batch"], r["path"]) for r in measured] == [
        (size, path)
        for size in (3, 4)
        for path in ("nvJPEG alone", "+ resize, crop: same-size groups", "+ resize, crop: one by one")
    ]
    assert all(r["img_per_s"] > 0 and r["host_cpu_us_per_img"] >= 0 for r in measured)


def test_the_decode_benchmark_refuses_a_missing_gpu_in_one_line(capsys):
    from loadtest.gpu_decode import main

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible here")
    with pytest.raises(SystemExit) as exit_info:
        main(["--device", "cuda"])
    assert exit_info.value.code == 2 and "no CUDA GPU is visible to PyTorch" in capsys.readouterr().err
