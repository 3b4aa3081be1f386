"""LitServe serving the same backend with LitServe's own batching.

LOADTEST_ONNX=artifacts/alexnet.onnx python -m loadtest.peers.litserve_server --port 8002
"""

from __future__ import annotations

import argparse

import litserve as ls
import numpy as np

from loadtest.peers import MAX_BATCH_SIZE, MAX_DELAY_MS, load_backend
from service.postprocess import top_k
from service.preprocess import preprocess


class AlexNetAPI(ls.LitAPI):
    def setup(self, device) -> None:
        self.backend, self.meta, self.config = load_backend()

    def decode_request(self, request):
        upload = request["file"]
        data = upload.file.read() if hasattr(upload, "file") else upload
        return preprocess(data, self.config)  # (3, 224, 224) float32

    def batch(self, inputs):
        return np.stack(inputs)

    def predict(self, x):
        return self.backend.infer(x)

    def unbatch(self, output):
        return list(output)

    def encode_response(self, logits):
        return {"results": [{"predictions": top_k(logits, self.meta.labels, 5)}]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.peers.litserve_server")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8002)
    args = p.parse_args(argv)
    server = ls.LitServer(
        AlexNetAPI(max_batch_size=MAX_BATCH_SIZE, batch_timeout=MAX_DELAY_MS / 1000, api_path="/classify"),
        accelerator="cpu",
        devices=1,
        workers_per_device=1,
        healthcheck_path="/healthz",
    )
    server.run(host=args.host, port=args.port, num_api_servers=1, log_level="warning", generate_client_file=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
