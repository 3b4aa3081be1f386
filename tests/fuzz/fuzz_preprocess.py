"""Coverage-guided fuzzing of image decoding and preprocessing (atheris, libFuzzer underneath).

    python tests/fuzz/fuzz_preprocess.py CORPUS_DIR -max_total_time=300 -malloc_limit_mb=1024 -rss_limit_mb=8192 -timeout=10

Any exception other than our typed ServiceError (a 4xx for the client) is a finding, and so is an
output that is not a finite (3, 224, 224) float32 array. Seed it with a copy of tests/corpus/nasty:
libFuzzer writes new inputs into the first corpus folder.
"""

import sys

import atheris

with atheris.instrument_imports(include=["service", "PIL"]):
    import numpy as np

    from service.errors import ServiceError
    from service.preprocess import PreprocessConfig, preprocess

# A lower pixel limit than the service's keeps each run's memory small; the check is the same code.
CONFIG = PreprocessConfig(max_pixels=4_000_000)


def test_one_input(data: bytes) -> None:
    try:
        out = preprocess(data, CONFIG)
    except ServiceError:
        return
    if out.shape != (3, 224, 224) or out.dtype != np.float32 or not np.isfinite(out).all():
        raise AssertionError(f"bad output {out.shape} {out.dtype}")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
