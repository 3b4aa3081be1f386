"""Mosec serving the same backend: a preprocessing stage (one worker per core) feeding a batched
inference stage, Mosec's own pipeline design.

    LOADTEST_ONNX=artifacts/alexnet.onnx python -m loadtest.peers.mosec_server --port 8003

Mosec reads its own flags (--port, --address, ...); its route is /classify here.
"""

from __future__ import annotations

import json
import os

import numpy as np
from mosec import Server, Worker
from mosec.errors import ValidationError

from loadtest.peers import MAX_BATCH_SIZE, MAX_DELAY_MS, load_backend, multipart_files
from service.postprocess import top_k
from service.preprocess import PreprocessConfig, preprocess


class Preprocess(Worker):
    def __init__(self) -> None:
        super().__init__()
        self.config = PreprocessConfig()

    def deserialize(self, data: bytes):
        return data  # the raw multipart body; parsed in forward

    def forward(self, data: bytes) -> np.ndarray:
        try:
            files = multipart_files(data)
        except ValueError as exc:
            raise ValidationError(str(exc)) from None
        if len(files) != 1:
            raise ValidationError("send exactly one multipart 'file' field")
        return preprocess(files[0], self.config)


class Inference(Worker):
    def __init__(self) -> None:
        super().__init__()
        self.backend, self.meta, _ = load_backend()

    def forward(self, data: list[np.ndarray]) -> list[np.ndarray]:
        logits = self.backend.infer(np.stack(data))
        return list(logits)

    def serialize(self, logits: np.ndarray) -> bytes:
        return json.dumps({"results": [{"predictions": top_k(logits, self.meta.labels, 5)}]}).encode()


def main() -> None:
    server = Server()
    server.append_worker(Preprocess, num=os.cpu_count() or 1, route="/classify")
    server.append_worker(
        Inference, num=1, max_batch_size=MAX_BATCH_SIZE, max_wait_time=max(1, int(MAX_DELAY_MS)), route="/classify"
    )
    server.run()


if __name__ == "__main__":
    main()
