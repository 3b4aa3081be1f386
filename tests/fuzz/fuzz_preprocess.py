"""Coverage-guided fuzzing of image decoding and preprocessing (atheris, libFuzzer underneath).

    python tests/fuzz/fuzz_preprocess.py CORPUS_DIR -max_total_time=300 -malloc_limit_mb=1024 -rss_limit_mb=8192 -timeout=10

Any exception other than our typed ServiceError (a 4xx for the client) is a finding, and so is an
output that is not a finite (3, 224, 224) float32 array; and the GPU route's header check
(``inspect_jpeg``: an EXIF orientation 1-8, None, or a ServiceError) on the same bytes. Seed it with a copy of tests/corpus/nasty:
libFuzzer writes new inputs into the first corpus folder.
"""

import sys

import atheris

with atheris.instrument_imports(include=["service", "PIL"]):
    import numpy as np

    from service.errors import ServiceError
    from service.preprocess import PreprocessConfig, inspect_jpeg, preprocess

# A lower pixel limit than the service's keeps each run's memory small; the check is the same code.
CONFIG = PreprocessConfig(max_pixels=4_000_000)


def test_one_input(data: bytes) -> None:
    try:
        orientation = inspect_jpeg(data, CONFIG, CONFIG.max_pixels)
    except ServiceError:
        pass
    else:
        if orientation is not None and orientation not in range(1, 9):
            raise AssertionError(f"bad orientation {orientation!r}")
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
