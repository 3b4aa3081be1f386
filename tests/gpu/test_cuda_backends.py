"""GPU code paths: PyTorch CUDA graphs and ONNX Runtime's CUDA provider against the CPU. Skipped without them.

On the fitted-head model (tests/synthetic.py) and held-out images: logits tens of units apart that
follow the image, so zeros, garbage or another image's row fail by far more than the tolerance (an
untrained AlexNet's logits are ~1e-2: a 5e-2 tolerance passed an all-zero output).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this host"),
]

from service.backends import select_backend  # noqa: E402
from service.preprocess import PreprocessConfig, preprocess  # noqa: E402
from service.settings import Settings  # noqa: E402
from tests.conftest import select_onnxruntime_cuda  # noqa: E402

TOLERANCE = 1e-2  # of the largest |logit|: fp16 (torch) and TF32 (ONNX Runtime's CUDA default) measure ~1e-3


@pytest.fixture(scope="module")
def held_out(fitted) -> tuple[np.ndarray, np.ndarray, float]:
    """One held-out image of each class as the service feeds them, (8, 3, 224, 224); ONNX Runtime's CPU
    logits for them, (8, 8); and the tolerance in logit units.

    Precondition: every two images' logits differ by more than twice the tolerance, so a backend that
    mixes up rows fails, and so does one that answers zeros (off by the largest |logit|, 100x it).
    """
    batch = np.stack([preprocess(data, PreprocessConfig()) for data, _ in fitted.eval_images(per_class=1)])
    cpu = select_backend(Settings(onnx=fitted.onnx, backend="onnxruntime", device="cpu")).backend
    reference = cpu.infer(batch)
    atol = TOLERANCE * float(np.abs(reference).max())
    apart = [np.abs(a - b).max() for i, a in enumerate(reference) for b in reference[i + 1 :]]
    assert min(apart) > 2 * atol
    return batch, reference, atol


def test_torch_cuda_graphs_match_the_cpu_reference(fitted, held_out):
    batch, reference, atol = held_out
    settings = Settings(
        onnx=fitted.onnx, checkpoint=fitted.checkpoint, backend="torch", device="cuda", max_batch_size=8
    )
    backend = select_backend(settings).backend
    assert backend.batch_sizes == (1, 2, 4, 8) and backend.precision == "fp16"
    got = backend.infer(batch)  # the graph for 8
    np.testing.assert_allclose(got, reference, rtol=0, atol=atol)
    np.testing.assert_array_equal(got, backend.infer(batch))  # graph replay is deterministic
    # 3 rows run in the graph for 4: the zeroed padding row must not leak into (or shift) the answers.
    np.testing.assert_allclose(backend.infer(batch[5:]), reference[5:], rtol=0, atol=atol)


def test_torch_inference_runs_beside_another_threads_cuda_work_without_a_warm_up(fitted, held_out):
    """The graphs are captured while the backend is built (--warmup false included): nothing another
    thread does later (allocations, synchronising its stream, as the engine's prepare thread does) can
    meet a capture in progress, which forbids such calls from every thread."""
    batch, reference, atol = held_out
    settings = Settings(
        onnx=fitted.onnx, checkpoint=fitted.checkpoint, backend="torch", device="cuda", max_batch_size=8
    )
    backend = select_backend(settings).backend  # warmup() is never called
    stop = threading.Event()

    def busy() -> None:
        while not stop.is_set():
            torch.empty(1 << 20, device="cuda").fill_(1)
            torch.cuda.current_stream().synchronize()

    neighbour = threading.Thread(target=busy)
    neighbour.start()
    try:
        x = torch.from_numpy(batch).cuda().half().contiguous(memory_format=torch.channels_last)
        for _ in range(20):
            with torch.inference_mode():
                logits = backend.infer_tensor(x)
                with backend.stream_context():
                    got = logits.float().cpu().numpy()
            np.testing.assert_allclose(got, reference, rtol=0, atol=atol)
    finally:
        stop.set()
        neighbour.join()


def test_onnxruntime_cuda_provider_matches_the_cpu_reference(fitted, held_out):
    batch, reference, atol = held_out
    backend = select_onnxruntime_cuda(Settings(onnx=fitted.onnx, backend="onnxruntime", device="cuda")).backend
    np.testing.assert_allclose(backend.infer(batch), reference, rtol=0, atol=atol)
    np.testing.assert_allclose(backend.infer(batch[2:5]), reference[2:5], rtol=0, atol=atol)


def test_onnxruntime_cuda_takes_a_device_tensor_and_runs_it_on_its_stream(fitted, held_out):
    """The engine's tensor path: the batch bound by its device pointer, ONNX Runtime on the backend's stream."""
    batch, reference, atol = held_out
    settings = Settings(onnx=fitted.onnx, backend="onnxruntime", device="cuda", max_batch_size=8)
    backend = select_onnxruntime_cuda(settings).backend
    assert backend.takes_tensors
    producer = torch.cuda.Stream()
    with torch.cuda.stream(producer):  # as the engine's prepare stream writes the batch
        x = torch.from_numpy(batch).cuda(non_blocking=True)
        ready = torch.cuda.Event()
        ready.record(producer)
    logits = backend.infer_tensor(x, ready)
    with backend.stream_context():
        got = logits.float().cpu().numpy()
    np.testing.assert_allclose(got, reference, rtol=0, atol=atol)
