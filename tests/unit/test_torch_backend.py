"""service/backends/torch.py's CUDA tensor path on a CPU host: the backend built as on a GPU, with
CUDA streams (tests/fakes.py) and graphs standing in. What runs on a real GPU is in tests/gpu/."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from service.backends.torch import TorchBackend
from tests.fakes import install_fake_cuda_streams

INPUT_SIZE = 8


class OnTheGpu(nn.Identity):
    """A model that the backend can move to the GPU and cast: it stays as it is."""

    def to(self, *args, **kwargs):
        return self


@pytest.fixture
def cuda_backend(monkeypatch):
    """(a TorchBackend on "cuda" whose captured graphs average the input over H and W, its streams)."""
    streams = install_fake_cuda_streams(monkeypatch)

    class Graph:
        def __init__(self, static_in, static_out):
            self.static_in, self.static_out = static_in, static_out

        def replay(self):
            streams.log.append(("replay", torch.cuda.current_stream()))
            self.static_out.copy_(self.static_in.mean(dim=(2, 3)))

    def capture(self, n):
        static_in, static_out = torch.zeros(n, 3, INPUT_SIZE, INPUT_SIZE), torch.zeros(n, 3)
        return Graph(static_in, static_out), None, static_in, static_out

    monkeypatch.setattr(TorchBackend, "_capture", capture)
    backend = TorchBackend(OnTheGpu(), "cuda", "fp32", 8, INPUT_SIZE, 1)
    assert backend.takes_tensors and backend.device == "cuda:0"
    return backend, streams


@pytest.mark.parametrize("ready", [None, object()], ids=["ready=None", "ready=event"])
def test_a_tensor_batch_is_read_on_the_backends_stream_after_its_producer(cuda_backend, ready):
    """With ``ready`` (the event the producer recorded after writing x) the backend's stream waits for
    it; without, for the stream current when infer_tensor was called, the caller's: not for itself,
    which would order nothing."""
    backend, streams = cuda_backend
    (ours,) = streams.made
    x = torch.rand(4, 3, INPUT_SIZE, INPUT_SIZE)
    logits = backend.infer_tensor(x, ready)
    producer = streams.caller if ready is None else ready
    assert streams.log == [("wait", ours, producer), ("record_stream", ours), ("replay", ours)]
    assert torch.cuda.current_stream() is streams.caller  # the caller's stream is current again
    with backend.stream_context():
        torch.testing.assert_close(logits, x.mean(dim=(2, 3)))  # x was copied in before the replay
