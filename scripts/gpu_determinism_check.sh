#!/usr/bin/env bash
# --deterministic on CUDA (model/determinism.py): two short training runs from the same seed must end
# with the same weights, bit for bit. A synthetic 4-class set at the arch's own crop size (224).
# The torchvision layout only. alexnet2012 adds LRN, which --deterministic runs as
# DeterministicLocalResponseNorm; its numbers and the swap are checked on the CPU (tests/unit/test_determinism.py).
#   bash scripts/gpu_determinism_check.sh DIR
set -euo pipefail
DIR=${1:?usage: gpu_determinism_check.sh DIR}
PY=${PYTHON:-python3}
"$PY" -m model.synthetic --out "$DIR/data" --classes 4 --train-per-class 64 --val-per-class 8 --size 256
common=(--data-path "$DIR/data" --device cuda --batch-size 32 --workers 4 --epochs 1 --ten-crop never
        --deterministic --print-every-s 30)
"$PY" -m model.train "${common[@]}" --output-dir "$DIR/a"
"$PY" -m model.train "${common[@]}" --output-dir "$DIR/b"
"$PY" - "$DIR/a/checkpoint.pt" "$DIR/b/checkpoint.pt" <<'PY'
import sys

import torch

from model.weights import load_training_checkpoint

(a, _), (b, _) = (load_training_checkpoint(path) for path in sys.argv[1:3])
pairs = zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True)
differ = [name for (name, x), y in pairs if not torch.equal(x, y)]
print("DETERMINISM " + ("the two runs' weights are identical" if not differ else f"weights differ: {differ}"))
assert not differ, differ
PY
