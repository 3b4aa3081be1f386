"""The GPU decode route end to end, on the CPU: a front end hands JPEG bytes (not crops) through the
arena to the engine, which decodes them with the tensor path's decoder, resizes and crops them as
tensors and answers; what the GPU does not take goes the CPU way, per image: what the front end
knows nvJPEG does not take it decodes itself, and a JPEG the decoder refuses the engine declines,
and the front end decodes it then.

Only the device is stood in for: the engine's backend takes tensors on the CPU (as ONNX Runtime does on
CUDA) and its JPEG decoder is tests.fakes.pil_decode (nvJPEG's contract: bytes in, (3, H, W) uint8
out, a RuntimeError for what it cannot decode), which also refuses JPEGs whose comment says so, as
nvJPEG refuses the kinds it does not decode. The front end's choice of route (service/pipeline.py),
the wire, the engine's declining and the front end's decode of what it declined, the answers and
/metrics are the service's own."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image

from loadtest.servers import served
from service.gpu_decode import JpegDecoder
from service.pipeline import GPU_DECODE_MAX_PIXELS
from tests.fakes import pil_decode
from tests.integration.conftest import settings
from tests.integration.test_service import classify, metric
from tests.synthetic import NUM_CLASSES
from tests.synthetic import make_image as class_image

pytestmark = pytest.mark.integration


def encode(image: Image.Image, fmt: str = "JPEG", **options) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


REFUSED = b"the stand-in for nvJPEG refuses this"


GIVEN: list[bytes] = []  # every JPEG the stand-in was handed, in order

# A 64x48 arithmetic-coded JPEG (SOF9), made with libjpeg-turbo's `cjpeg -arithmetic -quality 85` from a
# gradient: PIL decodes it, nvJPEG does not.
ARITHMETIC_JPEG = base64.b64decode(
    "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAUDBAQEAwUEBAQFBQUGBwwIBwcHBw8LCwkMEQ8SEhEPERETFhwXExQaFRERGCEYGh0d"
    "Hx8fExciJCIeJBweHx7/2wBDAQUFBQcGBw4ICA4eFBEUHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4e"
    "Hh4eHh4eHh7/yQARCAAwAEADASIAAhEBAxEB/8wACgAQEAUBEBEF/9oADAMBAAIRAxEAPwD/ANy/JH6C/T0btrXpAgB/U3WhGAek"
    "2BLbSNxP3LorFWVfszZCin0X5f0QVfI9RdGw0MgKiEM3O59PcbBme2wWasGGeA7V1k4Dp6HUfNWdL8FTFge1EEGIbOsY2GLHqx3V"
    "Np3PuSlkNeD/ACz37zxLu3MHzUaDBBChm6DSciY+zrYI8PtEv9dR/wD/AP8A0vF/t+jAyOmCzHflcu/iIeNu4OwXV24BGQYc5YcR"
    "6UvJ39StZ4jav60vhTmESxWl+LnW6d0V448dsgS4Z9q9R7YPdsy5hQldHMyKgqPn8SFWmM4m3hnKAgvh7adqePWVCg+DDioU+XDW"
    "ayRUewOni6/k9q5kwmFSdPC+T22TJSWXAk+9PhzabTSXV8rRQRVu+hMJ2+R3TSKMdK3VZFq1qQxcNOap50wLKE2s7Z6bjn0cG50j"
    "2NbElJDTOwGSWsq/CZPXb0yIx5wm81j6D8GXYxlUENaA/9k="
)


def stand_in_nvjpeg(tensors: list) -> list:
    GIVEN.extend(t.numpy().tobytes() for t in tensors)
    if any(REFUSED in t.numpy().tobytes() for t in tensors):
        raise RuntimeError("nvJPEG stand-in: not a kind it decodes")
    return pil_decode(tensors)


def photo(label: int, seed: int = 0) -> Image.Image:
    """A 448x336 image the fitted-head model classifies as ``label`` (tests/synthetic.py)."""
    return class_image(label, np.random.default_rng(seed)).resize((448, 336), Image.Resampling.BILINEAR)


def rotated(image: Image.Image) -> bytes:
    """``image`` stored turned a quarter, with the EXIF orientation (6) that turns it back."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(image.transpose(Image.Transpose.ROTATE_90), exif=exif.tobytes(), quality=95)


@pytest.fixture(scope="module")
def servers(fitted):
    """(the GPU route, the CPU route): two in-process servers on the fitted-head model, started once."""
    import service.engine_load
    from tests.conftest import InProcessServer

    cpu = InProcessServer(settings(fitted.onnx, decode="cpu"))
    cpu.wait_ready()
    patch = pytest.MonkeyPatch()
    select = service.engine_load.select_backend

    def takes_tensors(s):
        selection = select(s)
        selection.backend.takes_tensors = True  # as ONNX Runtime on CUDA: device tensors bound by pointer
        return selection

    def stand_in_decoder(s, selection):
        meta = selection.metadata
        decoder = JpegDecoder("cpu", meta.resize_size, meta.input_size, stand_in_nvjpeg)
        return decoder, "a stand-in for nvJPEG (PIL on the CPU), CPU for what it does not take"

    patch.setattr(service.engine_load, "select_backend", takes_tensors)
    patch.setattr(service.engine_load, "choose_decode", stand_in_decoder)
    try:
        gpu = InProcessServer(settings(fitted.onnx))
        gpu.wait_ready()
    finally:
        patch.undo()
    yield gpu, cpu
    gpu.stop()
    cpu.stop()


def decoded(url: str, path: str) -> float:
    return metric(url, f'alexnet_images_decoded_total{{path="{path}"}}')


def answer(url: str, data: bytes, name: str = "a.jpg", content_type: str = "image/jpeg") -> dict:
    r = classify(url, data, name=name, content_type=content_type, top_k=NUM_CLASSES)
    assert r.status_code == 200, r.text
    return r.json()["results"][0]


def assert_same_answer(got: dict, want: dict, atol: float, what: str = "") -> None:
    """The same ranking, probabilities within ``atol``: the engine behind the GPU route takes tensors, so
    its softmax is float32 where the CPU route's is float64, whatever decoded the image."""
    assert [p["index"] for p in got["predictions"]] == [p["index"] for p in want["predictions"]], what
    np.testing.assert_allclose(
        [p["probability"] for p in got["predictions"]], [p["probability"] for p in want["predictions"]],
        rtol=1e-5, atol=atol, err_msg=what,
    )  # fmt: skip


def test_the_engine_says_jpegs_are_decoded_there(servers):
    gpu, cpu = servers
    assert httpx.get(gpu.url + "/v1/models").json()["models"][0]["decode"]["where"] == "gpu"
    assert httpx.get(cpu.url + "/v1/models").json()["models"][0]["decode"]["where"] == "cpu"
    # and what the bench records beside each service's figures (loadtest.servers.served)
    assert served(gpu.url) == {
        "backend": "onnxruntime on cpu, fp32",
        "http_workers": 1,
        "decode": "gpu",
        "decode_reason": "a stand-in for nvJPEG (PIL on the CPU), CPU for what it does not take",
    }
    assert served(cpu.url)["decode_reason"] == "decode=cpu was asked for"  # type: ignore[index]


@pytest.mark.parametrize(
    ("what", "make", "route"),
    [
        ("a JPEG photo", lambda: encode(photo(3), quality=92), "gpu"),
        ("a JPEG turned by its EXIF orientation", lambda: rotated(photo(6, seed=1)), "gpu"),
        ("a greyscale JPEG", lambda: encode(photo(1, seed=2).convert("L"), quality=92), "gpu"),
        ("a PNG", lambda: encode(photo(5, seed=3), "PNG"), "cpu"),
        ("a CMYK JPEG", lambda: encode(photo(8, seed=4).convert("CMYK"), quality=92), "cpu"),
    ],
)
def test_each_image_takes_its_route_and_is_answered_as_on_the_cpu(servers, what, make, route):
    gpu, cpu = servers
    data = make()
    before = decoded(gpu.url, route)
    on_gpu_route, on_cpu = answer(gpu.url, data), answer(cpu.url, data)
    assert on_gpu_route["decode"] == route, what
    assert decoded(gpu.url, route) == before + 1
    assert_same_answer(on_gpu_route, on_cpu, atol=0.02, what=what)  # within what the tensor resize's floor allows


def test_an_arithmetic_coded_jpeg_is_decoded_by_the_front_end_never_handed_to_the_gpu(servers):
    gpu, cpu = servers
    on_gpu_route, on_cpu = answer(gpu.url, ARITHMETIC_JPEG), answer(cpu.url, ARITHMETIC_JPEG)
    assert on_gpu_route["decode"] == "cpu" and ARITHMETIC_JPEG not in GIVEN
    assert_same_answer(on_gpu_route, on_cpu, atol=1e-7)  # the same decoder and preprocessing


def test_a_jpeg_over_the_gpu_pixel_bound_is_decoded_by_the_front_end(servers):
    gpu, _ = servers
    side = int(GPU_DECODE_MAX_PIXELS**0.5) + 16  # a flat colour: a large image, a small file
    data = encode(Image.new("RGB", (side, side), (200, 40, 40)), quality=50)
    assert answer(gpu.url, data)["decode"] == "cpu"


def slots_in_use(server) -> int:
    return server.frontend.pipeline.arena.used_slots


def test_a_jpeg_the_gpu_decoder_refuses_is_declined_then_decoded_by_the_front_end_as_on_the_cpu(servers):
    gpu, cpu = servers
    data = encode(photo(4, seed=5), quality=92, comment=REFUSED)
    declined, on_cpu_path = decoded(gpu.url, "declined"), decoded(gpu.url, "cpu")
    GIVEN.clear()
    on_gpu_route, on_cpu = answer(gpu.url, data), answer(cpu.url, data)
    assert set(GIVEN) == {data}  # the engine's decoder was handed its bytes (as a batch, then alone)
    assert on_gpu_route["decode"] == "cpu" and on_gpu_route["timings_ms"]["preprocess"] > 0
    assert (decoded(gpu.url, "declined"), decoded(gpu.url, "cpu")) == (declined + 1, on_cpu_path + 1)
    assert_same_answer(on_gpu_route, on_cpu, atol=1e-7)  # the same decode and preprocessing
    assert slots_in_use(gpu) == 0


def test_declined_jpegs_keep_their_places_among_a_requests_images(servers):
    gpu, cpu = servers
    images = [
        encode(photo(1, seed=7), quality=92),
        encode(photo(2, seed=8), quality=92, comment=REFUSED),
        encode(photo(3, seed=9), quality=92),
        encode(photo(4, seed=10), quality=92, comment=REFUSED),
    ]
    files = [("file", (f"{i}.jpg", data, "image/jpeg")) for i, data in enumerate(images)]
    r_gpu = httpx.post(gpu.url + "/classify", files=files, params={"top_k": NUM_CLASSES}, timeout=60)
    r_cpu = httpx.post(cpu.url + "/classify", files=files, params={"top_k": NUM_CLASSES}, timeout=60)
    assert r_gpu.status_code == 200, r_gpu.text
    got, want = r_gpu.json()["results"], r_cpu.json()["results"]
    assert [r["filename"] for r in got] == ["0.jpg", "1.jpg", "2.jpg", "3.jpg"]
    assert [r["decode"] for r in got] == ["gpu", "cpu", "gpu", "cpu"]
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert_same_answer(g, w, atol=1e-7 if g["decode"] == "cpu" else 0.02, what=f"image {i}")
    assert slots_in_use(gpu) == 0


def test_a_broken_jpeg_that_reaches_the_engine_fails_alone_and_as_on_the_cpu(servers):
    gpu, cpu = servers
    whole = encode(photo(2, seed=6), quality=92)
    # A sound header and an end (the front end sends it on), a frame marker in the middle of its scan
    # (a file cut short stays with the front end: test_preprocess.py)
    broken = whole[: len(whole) // 2] + b"\xff\xc0" + whole[len(whole) // 2 + 2 :]
    GIVEN.clear()
    r_gpu, r_cpu = classify(gpu.url, broken), classify(cpu.url, broken)
    assert set(GIVEN) == {broken}  # it did reach the engine's decoder
    assert r_cpu.status_code == 400
    assert (r_gpu.status_code, r_gpu.json()) == (r_cpu.status_code, r_cpu.json())
    files = [("file", (f"{i}.jpg", data, "image/jpeg")) for i, data in enumerate([whole, broken])]
    r_gpu = httpx.post(gpu.url + "/classify", files=files, timeout=60)
    r_cpu = httpx.post(cpu.url + "/classify", files=files, timeout=60)
    assert r_gpu.status_code == 400 and r_gpu.json()["error"].startswith("image 1: ")
    assert r_gpu.json() == r_cpu.json()  # named by its place in the request, as on the CPU path
    assert slots_in_use(gpu) == 0
    assert answer(gpu.url, whole)["decode"] == "gpu"  # the route goes on
