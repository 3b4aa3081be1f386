"""What every child process does first: reuse freed memory (service.process.reuse_freed_memory)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import make_image

# Decodes a 500x375 JPEG on a thread (as a front end's decode threads do) and prints the page
# faults per decode once warm, after calling reuse_freed_memory() when argv[2] == "reuse".
DECODE_AND_COUNT_FAULTS = """
import resource, sys, threading
from service.preprocess import PreprocessConfig, preprocess_uint8
from service.process import reuse_freed_memory
applied = reuse_freed_memory() if sys.argv[2] == "reuse" else False
data = open(sys.argv[1], "rb").read()
config = PreprocessConfig()
faults = []
def decode():
    for _ in range(5):
        preprocess_uint8(data, config)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        preprocess_uint8(data, config)
    faults.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
thread = threading.Thread(target=decode)
thread.start()
thread.join()
print(applied, faults[0])
"""


def faults_per_decode(tmp_path, mode: str, env: dict[str, str] | None = None) -> tuple[bool, float]:
    image = tmp_path / "photo.jpg"
    image.write_bytes(make_image(500, 375))
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run(
        [sys.executable, "-c", DECODE_AND_COUNT_FAULTS, str(image), mode],
        capture_output=True,
        text=True,
        check=True,
        env=clean | (env or {}),
        timeout=120,
    ).stdout.split()
    return out[0] == "True", float(out[1])


def test_decoding_reuses_freed_memory_instead_of_faulting_in_fresh_pages(tmp_path):
    _, default = faults_per_decode(tmp_path, "default")
    applied, reused = faults_per_decode(tmp_path, "reuse")
    if not applied:
        pytest.skip("not glibc: no mallopt")
    # glibc's defaults hand each decoded image fresh pages (hundreds of faults per 500x375 image).
    assert default > 50, default
    assert reused < 5, reused


def test_the_users_own_malloc_settings_win(tmp_path):
    applied, _ = faults_per_decode(tmp_path, "reuse", {"MALLOC_TRIM_THRESHOLD_": "131072"})
    assert applied is False
