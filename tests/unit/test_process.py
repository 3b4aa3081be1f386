"""What every child process does: reuse freed memory, settle the garbage collector (service.process)."""

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


def run_snippet(code: str, *args: str, env: dict[str, str] | None = None) -> list[str]:
    """The words ``code`` prints, run in a fresh interpreter (its process-wide settings stay there)."""
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=True, env=env, timeout=120
    ).stdout.split()


def faults_per_decode(tmp_path, mode: str, env: dict[str, str] | None = None) -> tuple[bool, float]:
    image = tmp_path / "photo.jpg"
    image.write_bytes(make_image(500, 375))
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = run_snippet(DECODE_AND_COUNT_FAULTS, str(image), mode, env=clean | (env or {}))
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


# Builds 'start-up' state (a long-lived list of objects and a cycle of garbage), settles the collector
# when argv[1] == "settle", then runs request-like churn: 16 requests in flight, each holding 40
# container objects until it is answered and making a burst of 900 temporary ones (parsing,
# validation, rendering) that die by reference counting before the next request's turn. Prints:
# young collections during the churn, objects frozen, whether the start-up garbage is gone.
CHURN_AND_COUNT_COLLECTIONS = """
import gc, sys, weakref
from service.process import settle_garbage_collector
long_lived = [["route", i] for i in range(20_000)]
class Node: pass
a, b = Node(), Node()
a.other, b.other = b, a
garbage = weakref.ref(a)
del a, b
if sys.argv[1] == "settle":
    settle_garbage_collector()
else:
    gc.collect()
young = []
gc.callbacks.append(lambda phase, info: young.append(1) if phase == "stop" and info["generation"] == 0 else None)
in_flight = []
for _ in range(2_000):
    in_flight.append([[] for _ in range(40)])
    burst = [[] for _ in range(900)]
    del burst
    if len(in_flight) > 16:
        in_flight.pop(0)
print(len(young), gc.get_freeze_count(), garbage() is None)
"""


def churn(mode: str) -> tuple[int, int, bool]:
    out = run_snippet(CHURN_AND_COUNT_COLLECTIONS, mode)
    return int(out[0]), int(out[1]), out[2] == "True"


def test_a_settled_collector_skips_request_churn_and_no_longer_walks_start_up_objects():
    default_collections, default_frozen, _ = churn("default")
    collections, frozen, garbage_freed = churn("settle")
    # Python's default threshold (700) is below one burst: about a collection per request.
    assert default_collections > 1_000, default_collections
    assert collections < 5, collections
    assert default_frozen == 0
    assert frozen > 20_000  # start-up's objects, out of every later full collection's walk
    assert garbage_freed  # collected before the freeze, not kept for good
