"""The engine's GPU JPEG decoder (service.gpu_decode) on the CPU, with PIL standing in for nvJPEG: images
of one size are resized in groups, and every crop is the one that image gets alone; and the start-up
chroma probe (service.chroma_probe) that chooses among the decoders."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import io
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from service import chroma_probe, gpu_decode
from service.gpu_decode import GROUP_MAX_BYTES, JpegDecoder, same_size_groups
from tests.conftest import make_image
from tests.fakes import pil_decode, pil_decode_repeating_chroma


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
        for path in ("decode alone", "+ resize, crop: same-size groups", "+ resize, crop: one by one")
    ]
    assert all(r["img_per_s"] > 0 and r["host_cpu_us_per_img"] >= 0 for r in measured)


def test_the_decode_benchmark_refuses_a_missing_gpu_in_one_line(capsys):
    from loadtest.gpu_decode import main

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible here")
    with pytest.raises(SystemExit) as exit_info:
        main(["--device", "cuda"])
    assert exit_info.value.code == 2 and "no CUDA GPU is visible to PyTorch" in capsys.readouterr().err


def _jpeg(mode: str, subsampling: int, seed: int, size: tuple[int, int] = (120, 90)) -> bytes:
    """A noisy JPEG (saturated colour, where repeated chroma differs most from interpolated)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels).resize((size[0] * 3, size[1] * 3)).convert(mode)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90, **({"subsampling": subsampling} if mode == "RGB" else {}))
    return out.getvalue()


def _pil(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def _nvimgcodec():
    from tests.conftest import import_or_skip

    # Its import reports the missing CUDA libraries (nvJPEG, ...) on stderr: expected on a CPU host.
    return import_or_skip("nvidia.nvimgcodec", "nvImageCodec (pip install nvidia-nvimgcodec-cu13) is not installed")


def test_nvimgcodec_gives_pils_pixels_upright_as_stored_with_a_failure_in_its_place(monkeypatch):
    """The nvImageCodec decoder's code, run on its CPU decoder (libjpeg-turbo): (3, H, W) uint8 RGB
    equal to PIL's (the CPU path) for 4:2:0, 4:4:4 and grey JPEGs, EXIF orientation not applied (the
    engine applies it), and an undecodable image an exception at its own position. It must ask for
    interpolated chroma: the default changed between nvImageCodec releases."""
    nvimgcodec = _nvimgcodec()
    made = []
    real = nvimgcodec.Decoder
    monkeypatch.setattr(nvimgcodec, "Decoder", lambda **kwargs: made.append(kwargs) or real(**kwargs))
    jpegs = [
        _jpeg("RGB", 2, seed=1),  # 4:2:0
        _jpeg("RGB", 0, seed=2),  # 4:4:4
        b"\xff\xd8\xff not a JPEG",
        _jpeg("L", 0, seed=3),
        _turned(375, 500, 6, seed=4),
    ]
    decode = gpu_decode.nvimgcodec_decoder("cpu")
    out = decode([torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in jpegs])
    assert [kwargs["options"] for kwargs in made] == [":fancy_upsampling=1"]
    assert isinstance(out[2], RuntimeError) and "could not decode" in str(out[2])
    for i in (0, 1, 3, 4):
        assert out[i].dtype == torch.uint8 and out[i].shape[0] == 3
        # libjpeg-turbo on both sides: the same integer IDCT and upsampling, so equal within a level
        diff = np.abs(out[i].permute(1, 2, 0).numpy().astype(int) - _pil(jpegs[i]))
        assert diff.max() <= 1, (i, diff.max())
    assert tuple(out[4].shape) == (3, 500, 375)  # as stored; upright it would be 375 high


def test_nvimgcodec_loads_only_the_extensions_the_engine_decodes_with_and_their_libraries(tmp_path):
    """nvImageCodec loads every extension in its folder on import, and those without their CUDA library
    (nvJPEG2000, nvTIFF) each print an [ERROR] into the engine's log: the engine's import loads only
    nvJPEG's and libjpeg-turbo's, whose CPU decoder still decodes here, and nvJPEG's extension still
    finds the nvJPEG library (the nvidia-nvjpeg wheel, through the extension's real folder; it loads
    on a CPU host too): not a line of error. A folder the user names in NVIMGCODEC_EXTENSIONS_PATH is
    left as it is (here an empty one: nothing decodes)."""
    from tests.conftest import require_or_skip

    _nvimgcodec()
    try:
        importlib.metadata.distribution("nvidia-nvjpeg")
    except importlib.metadata.PackageNotFoundError:
        require_or_skip(False, "nvJPEG's wheel (pip install nvidia-nvjpeg) is not installed")
    script = (
        "import torch, os; from service import gpu_decode as g; "
        "out = g.nvimgcodec_decoder('cpu')([torch.frombuffer(g.tiny_jpeg(), dtype=torch.uint8)])[0]; "
        "print(tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__, "
        "os.environ.get('NVIMGCODEC_EXTENSIONS_PATH'))"
    )
    outputs = {}
    for name, path in (("engine", None), ("user's", str(tmp_path))):
        env = {k: v for k, v in os.environ.items() if k != "NVIMGCODEC_EXTENSIONS_PATH"}
        if path is not None:
            env["NVIMGCODEC_EXTENSIONS_PATH"] = path
        run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
        assert run.returncode == 0, run.stderr
        outputs[name] = run
    engine, users = outputs["engine"], outputs["user's"]
    assert engine.stdout.split() == ["(3,", "24,", "32)", "None"]  # decoded; the variable not left set
    said = engine.stdout + engine.stderr
    assert "[ERROR]" not in said and "Failed to load" not in said, said
    assert users.stdout.split() == ["RuntimeError", str(tmp_path)]


def test_on_cuda_nvimgcodec_allows_its_gpu_backends_only_and_its_hardware_decoder_first_unless_told_not_to(
    monkeypatch,
):
    """The backends and option the decoder is created with on a CUDA device (recorded, not created: no
    GPU here)."""
    nvimgcodec = _nvimgcodec()
    made = []
    monkeypatch.setattr(nvimgcodec, "Decoder", lambda **kwargs: made.append(kwargs))
    gpu_decode.nvimgcodec_decoder("cuda:0")
    gpu_decode.nvimgcodec_decoder("cuda:0", fancy_upsampling=False, hardware=False)
    kinds = [[backend.backend_kind for backend in kwargs["backends"]] for kwargs in made]
    assert kinds == [
        [nvimgcodec.HW_GPU_ONLY, nvimgcodec.HYBRID_CPU_GPU, nvimgcodec.GPU_ONLY],
        [nvimgcodec.HYBRID_CPU_GPU, nvimgcodec.GPU_ONLY],
    ]
    assert [kwargs["options"] for kwargs in made] == [":fancy_upsampling=1", ":fancy_upsampling=0"]
    assert [kwargs["device_id"] for kwargs in made] == [0, 0]
    assert [[b.load_hint for b in kwargs["backends"]] for kwargs in made] == [[1.0] * 3, [1.0] * 2]


def test_the_hardware_decoder_can_be_offered_a_share_of_each_batch_only(monkeypatch):
    """loadtest.gpu_decode --hardware-share: the hardware decoder's load hint (DALI gives it 0.65 or
    0.9), the CUDA decoders' unchanged; a share outside (0, 1] is refused before a decoder is made."""
    nvimgcodec = _nvimgcodec()
    made = []
    monkeypatch.setattr(nvimgcodec, "Decoder", lambda **kwargs: made.append(kwargs))
    gpu_decode.nvimgcodec_decoder("cuda:0", hardware_share=0.65)
    hints = [(b.backend_kind, round(b.load_hint, 4)) for b in made[0]["backends"]]
    assert hints == [(nvimgcodec.HW_GPU_ONLY, 0.65), (nvimgcodec.HYBRID_CPU_GPU, 1.0), (nvimgcodec.GPU_ONLY, 1.0)]
    for share in (0.0, 1.5):
        with pytest.raises(ValueError, match="hardware_share must be in"):
            gpu_decode.nvimgcodec_decoder("cuda:0", hardware_share=share)
    assert len(made) == 1


def test_the_decode_benchmark_measures_each_nvimgcodec_setting_as_a_decoder_of_its_own(monkeypatch, capsys):
    """Each setting other than the engine's (a hardware share, a number of host threads, repeated
    chroma) starts as the engine starts a decoder (a test JPEG, the chroma probes), under its own label,
    with only that setting changed; the engine's own nvimgcodec first. Here on the CPU, with PIL
    standing in for nvJPEG, and the rows carry the process's CPU per image beside the thread's."""
    from loadtest import gpu_decode as bench

    made = []

    def fake(device, **settings):
        made.append(settings)
        return pil_decode

    monkeypatch.setattr(gpu_decode, "nvimgcodec_decoder", fake)
    monkeypatch.setattr(bench, "nvimgcodec_decoder", fake)
    flags = ["--device", "cpu", "--decoder", "nvimgcodec", "--batch", "2", "--seconds", "0.01", "--images", "64x48"]
    variants = ["--hardware-share", "1,0.65", "--cpu-threads", "4,16", "--fancy-upsampling", "1,0"]
    code = bench.main([*flags, *variants, "--pool-keep-mib", "1024,0"])
    out = capsys.readouterr().out
    assert code == 0
    assert made == [
        {},
        {"hardware_share": 0.65},
        {"cpu_threads": 16},
        {"fancy_upsampling": False},
        {"pool_keep_bytes": 0},
    ]
    labels = [line.partition(" (chroma")[0] for line in out.splitlines() if " (chroma" in line]
    assert labels == [
        "nvimgcodec",
        "nvimgcodec, hardware share 0.65",
        "nvimgcodec, 16 CPU threads",
        "nvimgcodec, chroma repeated (fancy_upsampling=0)",
        "nvimgcodec, pool keeps 0 MiB",
    ]
    assert "process CPU us/img" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("    2  decode alone")]
    assert len(rows) == 5 and all(float(row[-1]) >= float(row[-2]) - 0.1 > 0 for row in rows)  # process >= thread
    made.clear()
    assert bench.main([*flags, "--cpu-threads", "8"]) == 0  # the engine's own not asked for: not measured
    assert made == [{"cpu_threads": 8}]
    for flag, value, message in (
        ("--hardware-share", "1,0", "--hardware-share: must be above 0 and at most 1, got 0"),
        ("--cpu-threads", "0", "--cpu-threads: must be at least 1, got 0"),
        ("--fancy-upsampling", "2", "--fancy-upsampling: must be 0 or 1, got 2"),
        ("--batch", "32,0", "--batch: must be at least 1, got 0"),
        ("--seconds", "0", "--seconds: must be above 0, got 0"),
        ("--pool-keep-mib", "-1", "--pool-keep-mib: must be at least 0, got -1"),
        ("--decoder=torchvision --cpu-threads", "8", "set nvimgcodec, which --decoder leaves out"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            bench.main(["--device", "cpu", *flag.split(), value])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_nvimgcodec_is_created_with_the_host_threads_asked_for(monkeypatch):
    nvimgcodec = _nvimgcodec()
    made = []
    monkeypatch.setattr(nvimgcodec, "Decoder", lambda **kwargs: made.append(kwargs))
    gpu_decode.nvimgcodec_decoder("cuda:0")
    gpu_decode.nvimgcodec_decoder("cuda:0", cpu_threads=16)
    assert [kwargs["max_num_cpu_threads"] for kwargs in made] == [gpu_decode.NVIMGCODEC_CPU_THREADS, 16]
    with pytest.raises(ValueError, match="cpu_threads must be at least 1, got 0"):
        gpu_decode.nvimgcodec_decoder("cuda:0", cpu_threads=0)


def test_repeated_chroma_is_what_the_interpolation_option_avoids():
    """The measurement behind the option, on the CPU decoder: the same 4:2:0 JPEG with repeated chroma
    is several levels away from PIL's pixels on average (docs/gpu.md: up to 9.5/255 per crop)."""
    _nvimgcodec()
    data = _jpeg("RGB", 2, seed=1)
    mean_diff = {}
    for fancy in (False, True):
        (image,) = gpu_decode.nvimgcodec_decoder("cpu", fancy_upsampling=fancy)(
            [torch.frombuffer(bytearray(data), dtype=torch.uint8)]
        )
        mean_diff[fancy] = np.abs(image.permute(1, 2, 0).numpy().astype(int) - _pil(data)).mean()
    assert mean_diff[True] < 0.01 and mean_diff[False] > 2, mean_diff


def test_the_chroma_probe_tells_interpolated_chroma_from_repeated_far_from_the_threshold_on_every_probe():
    """The calibration of CHROMA_THRESHOLD (docs/gpu.md, "JPEG chroma on the GPU"), on nvImageCodec's
    CPU decoder with the interpolation option on and off (0.00 on every probe; 97.8, 64.3, 97.8 and 98.9
    measured), and on the PIL stand-ins the other tests use: every probe on or under a quarter of it,
    and over four times it."""
    _nvimgcodec()
    threshold = chroma_probe.CHROMA_THRESHOLD
    interpolated = {
        "nvimgcodec": chroma_probe.chroma_diff(gpu_decode.nvimgcodec_decoder("cpu")),
        "nvimgcodec-no-hw": chroma_probe.chroma_diff(gpu_decode.nvimgcodec_decoder("cpu", hardware=False)),
        "pil": chroma_probe.chroma_diff(pil_decode),
    }
    repeated = {
        "nvimgcodec": chroma_probe.chroma_diff(gpu_decode.nvimgcodec_decoder("cpu", fancy_upsampling=False)),
        "pil": chroma_probe.chroma_diff(pil_decode_repeating_chroma),
    }
    for diff in [*interpolated.values(), *repeated.values()]:
        assert list(diff.by_probe) == list(chroma_probe.CHROMA_PROBES) and diff.refused == ()
    assert all(levels <= threshold / 4 for d in interpolated.values() for levels in d.by_probe.values()), interpolated
    assert all(levels > 4 * threshold for d in repeated.values() for levels in d.by_probe.values()), repeated
    assert (
        chroma_probe.describe_chroma(interpolated["nvimgcodec"])
        == "chroma interpolated: 4 probes, the worst 0.0 levels from the CPU path (4:2:0 128x96)"
    )
    assert chroma_probe.describe_chroma(repeated["nvimgcodec"]) == (
        "chroma repeated on 4 of 4 probes (levels from the CPU path, threshold 8: 4:2:0 1280x960 98.9, "
        "4:2:0 128x96 97.8, progressive 4:2:0 128x96 97.8, 4:2:2 128x96 64.3); crops differ from the CPU "
        "path's, docs/gpu.md"
    )


def test_the_chroma_probes_are_one_jpeg_of_each_kind_a_backend_may_take():
    """Baseline 4:2:0, baseline 4:2:2, progressive 4:2:0, and baseline 4:2:0 over the hybrid Huffman
    threshold DALI gives nvImageCodec (1000x1000 pixels), each of whole MCUs."""
    kinds = {}
    for name, data in chroma_probe.chroma_probe_jpegs().items():
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == "JPEG" and image.mode == "RGB"
            assert image.width % 16 == 0 and image.height % 16 == 0
            (_, luma_h, luma_v, _), *chroma = image.layer  # (id, h, v, table) per component
            assert [(h, v) for _, h, v, _ in chroma] == [(1, 1), (1, 1)]
            kinds[name] = (f"{luma_h}x{luma_v}", bool(image.info.get("progressive")), image.size)
    assert kinds == {
        "4:2:0 128x96": ("2x2", False, (128, 96)),
        "4:2:2 128x96": ("2x1", False, (128, 96)),
        "progressive 4:2:0 128x96": ("2x2", True, (128, 96)),
        "4:2:0 1280x960": ("2x2", False, (1280, 960)),
    }
    assert 1280 * 960 > 1000 * 1000


def test_the_calibration_script_prints_each_probe_separated_and_what_the_probes_cost():
    """scripts/measure_chroma_upsampling.py --only probes, where docs/gpu.md's figures come from: one row
    per probe with both figures, exit status 0 only when the threshold separates them on every probe."""
    _nvimgcodec()
    repo = pathlib.Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "scripts/measure_chroma_upsampling.py", "--only", "probes"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {line.split("  ")[0].strip(): line for line in proc.stdout.splitlines()[2:6]}
    assert list(rows) == list(chroma_probe.CHROMA_PROBES), proc.stdout
    assert "4:2:2 128x96" in rows and " 0.00   64.3  yes (8.0x the threshold)" in rows["4:2:2 128x96"]
    assert all(" 0.00 " in row and "  yes (" in row for row in rows.values()), proc.stdout
    cost = re.search(
        r"cost: built in \d+ ms .* (\d+\.\d\d) MB; PIL's reference pixels decoded once in \d+ ms; "
        r"one chroma_diff \d+ ms",
        proc.stdout,
    )
    assert cost and 0.3 < float(cost[1]) < 1.5, proc.stdout  # 0.70 MB with Pillow 13


def _repeating_on(kind):
    """A decoder that interpolates chroma as PIL does except on the JPEGs ``kind`` picks, whose chroma it
    repeats: a backend of nvImageCodec that ignores the option and takes only some images."""

    def decode(tensors):
        out = []
        for tensor in tensors:
            with Image.open(io.BytesIO(tensor.numpy().tobytes())) as image:
                picked = kind(image)
            out += (pil_decode_repeating_chroma if picked else pil_decode)([tensor])
        return out

    return decode


def _progressive(image):
    return bool(image.info.get("progressive"))


def _large(image):
    return image.width * image.height > 1000 * 1000


def _chroma_422(image):
    return image.layer[0][1:3] == (2, 1)


@pytest.mark.parametrize(
    ("kind", "worst"),
    [
        (_progressive, "progressive 4:2:0 128x96"),
        (_large, "4:2:0 1280x960"),
        (_chroma_422, "4:2:2 128x96"),
        (lambda image: image.size == (128, 96) and not _progressive(image) and not _chroma_422(image), "4:2:0 128x96"),
    ],
)
def test_a_decoder_that_repeats_chroma_on_one_kind_of_jpeg_only_fails_the_probe_which_names_that_kind(kind, worst):
    calls = []
    repeating = _repeating_on(kind)

    def counted(tensors):
        calls.append(len(tensors))
        return repeating(tensors)

    diff = chroma_probe.chroma_diff(counted)
    assert calls == [4]  # the probes in one batch, as the engine decodes
    assert diff.worst == worst and diff.levels > 4 * chroma_probe.CHROMA_THRESHOLD and not diff.interpolated
    assert [name for name, levels in diff.by_probe.items() if levels > 0] == [worst], diff
    assert chroma_probe.describe_chroma(diff) == (
        f"chroma repeated on 1 of 4 probes (levels from the CPU path, threshold 8: {worst} {diff.levels:.1f}); "
        "crops differ from the CPU path's, docs/gpu.md"
    )


def test_the_engine_passes_over_a_decoder_that_repeats_chroma_only_on_large_jpegs_and_names_the_probe(
    monkeypatch, caplog
):
    """As a hardware decoder that takes only images above some size and ignores the option would: the
    small probes pass, the large one does not, and the log says which."""
    large_only = _repeating_on(_large)
    monkeypatch.setattr(
        gpu_decode, "decoder_factories", lambda: {"hw": _serving(large_only), "cuda": _serving(pil_decode)}
    )
    decoder, name = gpu_decode.start_jpeg_decoder("cpu", 256, 224)
    assert name == "cuda" and decoder.chroma.startswith("chroma interpolated: 4 probes")
    assert "GPU JPEG decoding by cuda, because hw: chroma repeated on 1 of 4 probes (levels from the CPU path, " in (
        caplog.text
    )
    assert "threshold 8: 4:2:0 1280x960 9" in caplog.text
    caplog.clear()
    monkeypatch.setattr(gpu_decode, "decoder_factories", lambda: {"hw": _serving(large_only)})
    decoder, name = gpu_decode.start_jpeg_decoder("cpu", 256, 224)
    diff = chroma_probe.chroma_diff(large_only)
    assert name == "hw" and decoder.chroma == chroma_probe.describe_chroma(diff)
    assert decoder.warning and f"threshold 8: hw {diff.levels:.1f} (4:2:0 1280x960))" in decoder.warning


def test_a_probe_the_decoder_refuses_is_left_to_the_cpu_path_and_said_and_all_refused_raises():
    """A JPEG the GPU decoder refuses is declined to a front end's CPU path (PIL's chroma), so it does
    not count against the decoder; one wrongly shaped image, or every probe refused, fails the probe."""

    def refuses_progressive(tensors):
        out = pil_decode(tensors)
        for i, tensor in enumerate(tensors):
            with Image.open(io.BytesIO(tensor.numpy().tobytes())) as image:
                if _progressive(image):
                    out[i] = RuntimeError("progressive: not on this backend")
        return out

    diff = chroma_probe.chroma_diff(refuses_progressive)
    assert diff.refused == ("progressive 4:2:0 128x96",) and diff.interpolated
    assert list(diff.by_probe) == ["4:2:0 128x96", "4:2:2 128x96", "4:2:0 1280x960"]
    assert chroma_probe.describe_chroma(diff) == (
        "chroma interpolated: 3 probes, the worst 0.0 levels from the CPU path (4:2:0 128x96); refused, so "
        "decoded by the CPU path: progressive 4:2:0 128x96"
    )
    with pytest.raises(RuntimeError, match="could not decode"):
        chroma_probe.chroma_diff(lambda tensors: [RuntimeError("could not decode")] * len(tensors))
    with pytest.raises(RuntimeError, match=r"4:2:2 128x96 came back as uint8 \(96, 64, 3\)"):
        chroma_probe.chroma_diff(
            lambda tensors: [
                torch.zeros(3, 96, 64, dtype=torch.uint8) if i == 1 else image
                for i, image in enumerate(pil_decode(tensors))
            ]
        )
    with pytest.raises(RuntimeError, match="the JPEG decoder answered 0 images for one"):
        chroma_probe.chroma_diff(lambda tensors: [])  # no probe answered: each refused (decode_each)


def test_a_batch_call_that_raises_is_retried_one_by_one_for_the_probes():
    """As torchvision's decode does when one image of a batch fails: the probe still measures the rest."""
    calls = []

    def fails_progressive_whole_batch(tensors):
        calls.append(len(tensors))
        for tensor in tensors:
            with Image.open(io.BytesIO(tensor.numpy().tobytes())) as image:
                if _progressive(image):
                    raise RuntimeError("nvjpeg: progressive not supported")
        return pil_decode(tensors)

    diff = chroma_probe.chroma_diff(fails_progressive_whole_batch)
    assert calls == [4, 1, 1, 1, 1] and diff.refused == ("progressive 4:2:0 128x96",) and diff.interpolated


def _missing(device, **options):
    raise ImportError("No module named 'nvidia.nvimgcodec'")


def _serving(decode):
    """A decoder factory that hands out ``decode`` on any device."""
    return lambda device: decode


def test_the_engine_passes_over_a_gpu_decoder_that_repeats_chroma_for_the_next_and_says_so(monkeypatch, caplog):
    repeated = chroma_probe.describe_chroma(chroma_probe.chroma_diff(pil_decode_repeating_chroma))
    interpolated = "chroma interpolated: 4 probes, the worst 0.0 levels from the CPU path (4:2:0 128x96)"
    factories = {
        "hw": _serving(pil_decode_repeating_chroma),
        "missing": _missing,
        "cuda": _serving(pil_decode),
        "later": _serving(pil_decode),
    }
    monkeypatch.setattr(gpu_decode, "decoder_factories", lambda: factories)
    decoder, name = gpu_decode.start_jpeg_decoder("cpu", 256, 224)
    assert name == "cuda" and decoder.decode_batch is pil_decode
    assert decoder.chroma == interpolated
    assert f"GPU JPEG decoding by cuda, because hw: {repeated}; missing: ImportError: No module" in caplog.text
    assert repeated.startswith("chroma repeated on 4 of 4 probes") and "docs/gpu.md" in repeated


def test_where_every_gpu_decoder_repeats_chroma_the_first_that_decodes_comes_with_its_warning(monkeypatch, caplog):
    diff = chroma_probe.chroma_diff(pil_decode_repeating_chroma)
    repeating = _serving(pil_decode_repeating_chroma)
    monkeypatch.setattr(
        gpu_decode, "decoder_factories", lambda: {"missing": _missing, "hw": repeating, "tv": repeating}
    )
    decoder, name = gpu_decode.start_jpeg_decoder("cpu", 256, 224)
    assert name == "hw" and decoder.decode_batch is pil_decode_repeating_chroma
    assert decoder.chroma == chroma_probe.describe_chroma(diff) and decoder.chroma.startswith("chroma repeated on 4")
    assert not [r for r in caplog.records if r.levelname == "WARNING"]  # logged by whoever decodes with it
    assert decoder.warning == (
        "GPU JPEG decoding by hw, the first that decodes, though none here interpolates chroma as the CPU path "
        "does (chroma probes, the worst's levels of 255 from PIL's pixels, threshold 8: "
        f"hw {diff.levels:.1f} (4:2:0 1280x960), tv {diff.levels:.1f} (4:2:0 1280x960)): on "
        'saturated colour its crops will differ from the CPU path\'s (docs/gpu.md, "JPEG chroma on the GPU"); '
        "missing: ImportError: No module named 'nvidia.nvimgcodec'"
    )
    caplog.clear()
    decoder, name = gpu_decode.start_jpeg_decoder("cpu", 256, 224, ["tv"])  # as loadtest.gpu_decode starts each
    assert name == "tv" and decoder.chroma.startswith("chroma repeated") and "the first that decodes" in decoder.warning


def test_the_engine_takes_the_first_gpu_decoder_that_decodes_and_says_why_it_passed_the_others(monkeypatch, caplog):
    def decodes_nothing(device, **options):
        return lambda tensors: [RuntimeError("nvImageCodec could not decode this JPEG")] * len(tensors)

    monkeypatch.setattr(gpu_decode, "torchvision_decoder", lambda device: pil_decode)
    for broken, why in ((_missing, "ImportError: No module"), (decodes_nothing, "RuntimeError: nvImageCodec could")):
        monkeypatch.setattr(gpu_decode, "nvimgcodec_decoder", broken)
        caplog.clear()
        decoder, name = gpu_decode.start_jpeg_decoder("cpu", 256, 224)
        assert name == "torchvision" and decoder.decode_batch is pil_decode
        assert f"GPU JPEG decoding by torchvision, because nvimgcodec: {why}" in caplog.text
    monkeypatch.setattr(gpu_decode, "torchvision_decoder", _missing)
    with pytest.raises(
        RuntimeError,
        match=r"^nvimgcodec: RuntimeError: .*; nvimgcodec-no-hw: RuntimeError: .*; torchvision: ImportError: No module",
    ):
        gpu_decode.start_jpeg_decoder("cpu", 256, 224)


def test_nvimgcodec_is_the_engines_first_choice_where_it_decodes():
    _nvimgcodec()
    decoder, name = gpu_decode.start_jpeg_decoder("cpu", 256, 224)  # its CPU decoder: the same code
    assert name == "nvimgcodec" and decoder.chroma == (
        "chroma interpolated: 4 probes, the worst 0.0 levels from the CPU path (4:2:0 128x96)"
    )
    (crop,) = decoder.decode([(memoryview(bytearray(make_image(500, 375, seed=9))), 1)])
    assert tuple(crop.shape) == (3, 224, 224) and crop.dtype == torch.uint8


def test_the_decode_benchmark_measures_each_decoder_that_starts_and_names_the_others(capsys, monkeypatch):
    _nvimgcodec()
    from loadtest.gpu_decode import main

    def broken(device):
        raise ImportError("no torchvision here")

    monkeypatch.setattr(gpu_decode, "torchvision_decoder", broken)
    args = ["--device", "cpu", "--batch", "2", "--seconds", "0.01", "--images", "500x375"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert (
        "nvimgcodec (chroma interpolated: 4 probes, the worst 0.0 levels from the CPU path (4:2:0 128x96)):\nbatch"
        in out
    )
    assert "nvimgcodec-no-hw (chroma interpolated" in out
    assert "torchvision: not measured, torchvision: ImportError: no torchvision" in out
    assert main([*args, "--decoder", "torchvision"]) == 1  # nothing measured
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--decoder", "nvjpeg"])
    assert (
        exit_info.value.code == 2
        and "choose from ['nvimgcodec', 'nvimgcodec-no-hw', 'torchvision']" in capsys.readouterr().err
    )


def test_one_jpeg_failing_in_any_way_is_that_jpegs_failure_not_the_batchs():
    """decode_each: a batch call that raises any exception, or answers fewer images than it was given,
    is retried image by image; each image's own failure (any exception type, or no answer) takes its
    place. A batch lost to one image would count as a backend failure of the engine."""
    from service.decode_batch import decode_each

    good = torch.zeros(3, 2, 2, dtype=torch.uint8)
    data = [torch.tensor([n], dtype=torch.uint8) for n in range(4)]  # 1: ValueError, 2: TypeError, 3: no answer

    def decoder(batch: list[torch.Tensor]) -> list:
        if len(batch) > 1:
            return [good] * (len(batch) - 1)  # short: one image missing, no error
        (n,) = batch[0].tolist()
        if n == 1:
            raise ValueError("odd image")
        if n == 2:
            raise TypeError("odd image")
        return [] if n == 3 else [good]

    out = decode_each(decoder, data)
    assert out[0] is good and isinstance(out[1], ValueError) and isinstance(out[2], TypeError)
    assert isinstance(out[3], RuntimeError) and "answered 0 images for one" in str(out[3]) and len(out) == 4

    def raising(batch: list[torch.Tensor]) -> list:
        if len(batch) > 1:
            raise ValueError("the batch call failed")
        return [good]

    assert decode_each(raising, data) == [good] * 4


FAKE_CUDA_RUNTIME = r"""
#include <stdint.h>
static int pool_device = -1, pool_attr = -1;
static uint64_t pool_threshold = 0;
static char the_pool;
int cudaDeviceGetMemPool(void **pool, int device) {
    if (device > 1) return 101;  /* cudaErrorInvalidDevice */
    pool_device = device; *pool = &the_pool; return 0;
}
int cudaMemPoolSetAttribute(void *pool, int attr, void *value) {
    if (pool != &the_pool) return 1;
    pool_attr = attr; pool_threshold = *(uint64_t *)value; return 0;
}
int fake_device(void) { return pool_device; }
int fake_attr(void) { return pool_attr; }
uint64_t fake_threshold(void) { return pool_threshold; }
"""


def test_the_decoders_cuda_pool_is_told_what_to_keep_through_the_cuda_runtime(tmp_path, monkeypatch):
    """keep_pool_memory calls the CUDA runtime's cudaDeviceGetMemPool and cudaMemPoolSetAttribute
    (cudaMemPoolAttrReleaseThreshold, a uint64 by pointer) as CUDA declares them: checked against a fake
    runtime compiled here, which returns CUDA's error codes as the real one would. No runtime, or an
    error, is a reason in words, never an exception; nvimgcodec_decoder sets it for its device on CUDA."""
    import ctypes
    import shutil

    if shutil.which("gcc") is None:
        pytest.skip("no C compiler here to build the fake CUDA runtime")
    source = tmp_path / "fake_cudart.c"
    source.write_text(FAKE_CUDA_RUNTIME)
    library = tmp_path / "libfake_cudart.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(library), str(source)], check=True, timeout=60)
    assert gpu_decode.keep_pool_memory(1, 3 << 40, str(library)) is None
    fake = ctypes.CDLL(str(library))
    fake.fake_threshold.restype = ctypes.c_uint64
    assert (fake.fake_device(), fake.fake_attr(), fake.fake_threshold()) == (1, 4, 3 << 40)  # above 32 bits
    assert gpu_decode.keep_pool_memory(2, 0, str(library)) == "cudaDeviceGetMemPool failed: CUDA error 101"
    assert gpu_decode.keep_pool_memory(0, 0, str(tmp_path / "none.so")).startswith("cannot load the CUDA runtime")

    nvimgcodec = _nvimgcodec()
    kept = []
    monkeypatch.setattr(nvimgcodec, "Decoder", lambda **kwargs: None)
    monkeypatch.setattr(gpu_decode, "keep_pool_memory", lambda device, keep: kept.append((device, keep)))
    gpu_decode.nvimgcodec_decoder("cuda:1")
    gpu_decode.nvimgcodec_decoder("cuda:0", pool_keep_bytes=0)
    gpu_decode.nvimgcodec_decoder("cpu")  # no CUDA pool
    assert kept == [(1, gpu_decode.POOL_KEEP_BYTES), (0, 0)]


def test_a_decoder_that_fails_every_image_the_same_odd_way_is_broken_and_fails_the_batch():
    """Not a RuntimeError (a decoding failure), the same type for the batch and every image: the
    decoder is broken, and that is a failed batch (counted towards the engine's health), not every
    image declined to the CPU in silence. RuntimeErrors for all stay the images' own (all corrupt)."""
    from service.decode_batch import decode_each

    data = [torch.tensor([n], dtype=torch.uint8) for n in range(3)]

    def broken(batch: list[torch.Tensor]) -> list:
        raise AttributeError("'NoneType' object has no attribute 'decode'")

    with pytest.raises(AttributeError):
        decode_each(broken, data)

    def all_corrupt(batch: list[torch.Tensor]) -> list:
        raise RuntimeError("could not decode")

    assert all(isinstance(image, RuntimeError) for image in decode_each(all_corrupt, data))
