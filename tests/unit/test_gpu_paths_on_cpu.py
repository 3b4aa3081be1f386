"""What of the GPU code paths a CPU host can check: the torch backend's batch buckets, which backends
get JPEGs decoded on the GPU, the benchmark and gpu_check.sh refusing to call a run that measured
nothing a success, gpu_check's report, and the TensorRT GPU tests skipping where the bindings are
installed without their libraries."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import pytest
import torch

from export.onnx_metadata import ModelMetadata
from loadtest.bench_summary import unmeasured_backends
from service import chroma_probe, gpu_decode
from service.backends import Selection
from service.backends.base import Backend, bucket_for
from service.backends.torch import cuda_graph_buckets
from service.engine_load import choose_decode
from service.errors import NotReady
from service.settings import Settings
from tests.conftest import wait_until
from tests.fakes import pil_decode, pil_decode_repeating_chroma
from tests.integration.test_processes import alive

REPO = Path(__file__).resolve().parents[2]


def test_a_batch_runs_in_the_next_bucket_and_none_runs_over_the_largest():
    buckets = cuda_graph_buckets(48)  # (1, 2, 4, 8, 16, 32, 48): one CUDA graph each, captured at warm-up
    assert [bucket_for(n, buckets) for n in (1, 2, 3, 5, 16, 17, 33, 48)] == [1, 2, 4, 8, 16, 32, 48, 48]
    with pytest.raises(ValueError, match="batch of 49 is over max_batch_size 48"):
        bucket_for(49, buckets)


class CudaBackend(Backend):
    name, device, precision, max_batch_size = "onnxruntime", "cuda:0", "fp16", 8

    def infer(self, batch):
        raise AssertionError("not run here")


def test_jpegs_are_decoded_on_the_gpu_for_any_cuda_backend_that_takes_tensors_and_else_it_says_why(monkeypatch, caplog):
    # nvJPEG, as the engine sees it
    monkeypatch.setattr(gpu_decode, "nvimgcodec_decoder", lambda device, **options: pil_decode)
    meta = ModelMetadata("torchvision", ["a", "b"], 224, 256, "test", "c" * 64)
    backend = CudaBackend()
    selection = Selection(backend, meta, "test")
    decoder, why = choose_decode(Settings(decode="auto"), selection)
    assert (
        decoder is None
        and why == "auto: on the CPU in the front ends, because the onnxruntime backend takes host batches only"
    )
    with pytest.raises(NotReady, match="decode=gpu was asked for, but the onnxruntime backend takes host batches only"):
        choose_decode(Settings(decode="gpu"), selection)
    backend.takes_tensors = True  # as ONNX Runtime's CUDA provider and TensorRT do
    decoder, why = choose_decode(Settings(decode="auto"), selection)
    assert isinstance(decoder, gpu_decode.JpegDecoder) and why == (
        "nvJPEG on the GPU via nvimgcodec (chroma interpolated: 4 probes, the worst 0.0 levels from the CPU path "
        "(4:2:0 128x96)), CPU for what it does not take"
    )
    # Where every decoder repeats chroma, auto decodes on the CPU, saying what it measured; gpu decodes
    # on the GPU all the same.
    monkeypatch.setattr(gpu_decode, "nvimgcodec_decoder", lambda device, **options: pil_decode_repeating_chroma)
    monkeypatch.setattr(gpu_decode, "torchvision_decoder", lambda device: pil_decode_repeating_chroma)
    repeated = chroma_probe.describe_chroma(chroma_probe.chroma_diff(pil_decode_repeating_chroma))
    assert repeated.startswith("chroma repeated on 4 of 4 probes (levels from the CPU path, threshold 8: ")
    caplog.clear()
    assert choose_decode(Settings(decode="auto"), selection) == (
        None,
        "auto: on the CPU in the front ends, because no GPU JPEG decoder here interpolates chroma as the CPU "
        f"path does (the first that decodes, nvimgcodec: {repeated}); --decode gpu decodes on the GPU anyway",
    )
    assert "the first that decodes" not in caplog.text  # no warning about a decoder it does not use
    decoder, why = choose_decode(Settings(decode="gpu"), selection)
    assert isinstance(decoder, gpu_decode.JpegDecoder) and why == (
        f"nvJPEG on the GPU via nvimgcodec ({repeated}), CPU for what it does not take"
    )
    assert decoder.warning and [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [decoder.warning]
    assert choose_decode(Settings(decode="cpu"), selection) == (None, "decode=cpu was asked for")


@pytest.mark.parametrize(
    "failure",
    [
        RuntimeError("decode_jpegs_cuda: torchvision not compiled with nvJPEG support"),
        AttributeError("'_OpNamespace' 'image' object has no attribute 'decode_jpegs_cuda'"),
    ],
)
def test_a_gpu_decoder_that_fails_its_start_up_probe_leaves_decoding_to_the_cpu(monkeypatch, failure):
    """The decoder answers image by image, so a broken nvJPEG comes back as a result, not as an exception:
    the start-up probe must look at what it got (and take any exception a missing extension raises)."""

    def broken(tensors):
        raise failure

    monkeypatch.setattr(gpu_decode, "nvimgcodec_decoder", lambda device, **options: broken)
    monkeypatch.setattr(gpu_decode, "torchvision_decoder", lambda device: broken)
    meta = ModelMetadata("torchvision", ["a", "b"], 224, 256, "test", "c" * 64)
    backend = CudaBackend()
    backend.takes_tensors = True
    selection = Selection(backend, meta, "test")
    decoder, why = choose_decode(Settings(decode="auto"), selection)
    assert decoder is None and why.startswith("auto: on the CPU in the front ends, because no GPU JPEG decoder")
    for name in ("nvimgcodec", "torchvision"):
        assert f"{name}: {type(failure).__name__}: {failure}" in why
    with pytest.raises(NotReady, match="decode=gpu was asked for, but no GPU JPEG decoder is usable here: nvimgcodec"):
        choose_decode(Settings(decode="gpu"), selection)


def test_the_gpu_decoder_drains_the_callers_stream_before_nvjpeg_writes(monkeypatch):
    """torchvision allocates nvJPEG's output on the caller's stream and writes it from its own stream:
    memory the caller's stream still uses must not be handed over, so that stream is drained first
    (asleep on a blocking event recorded on it, not spinning in Stream.synchronize)."""
    calls = []
    stream = object()

    class Event:
        def __init__(self, blocking=False):
            calls.append(("event", blocking))

        def record(self, on=None):
            calls.append(("record", on))

        def synchronize(self):
            calls.append("synchronize")

    fake_io = types.ModuleType("torchvision.io")
    fake_io.ImageReadMode = types.SimpleNamespace(RGB="RGB")
    fake_io.decode_jpeg = lambda data, mode, device: calls.append(("decode_jpeg", len(data), mode, device)) or []
    monkeypatch.setitem(sys.modules, "torchvision", types.ModuleType("torchvision"))
    monkeypatch.setitem(sys.modules, "torchvision.io", fake_io)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: calls.append(("stream", device)) or stream)
    monkeypatch.setattr(torch.cuda, "Event", Event)
    gpu_decode.torchvision_decoder("cuda:0")([torch.zeros(4, dtype=torch.uint8)] * 2)
    assert calls == [
        ("stream", "cuda:0"),
        ("event", True),
        ("record", stream),
        "synchronize",
        ("decode_jpeg", 2, "RGB", "cuda:0"),
    ]
    calls.clear()
    gpu_decode.torchvision_decoder("cpu")([torch.zeros(4, dtype=torch.uint8)])
    assert calls == [("decode_jpeg", 1, "RGB", "cpu")]


def test_a_benchmark_is_a_failure_when_a_loaded_backend_went_unmeasured():
    measured = {"service": {"url": "http://x", "steps": [{"concurrency": 1, "requests": 9}]}}
    result = {
        "backends": {
            "torch": {"engine": {}, **measured},
            "onnxruntime": {"engine": {}, "service": {"skipped": "failed to start: No module named 'opentelemetry'"}},
            "tensorrt": {"skipped": "tensorrt is not installed"},  # not loadable here: not a failure
        }
    }
    assert unmeasured_backends(result) == {"onnxruntime": "failed to start: No module named 'opentelemetry'"}
    result["backends"]["onnxruntime"] = {"engine": {}, **measured}
    assert unmeasured_backends(result) == {}
    nothing = {"backends": {"tensorrt": {"skipped": "no GPU"}, "torch": {"skipped": "no CUDA"}}}
    assert "no backend loaded" in unmeasured_backends(nothing)["(all)"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this host has a CUDA GPU: gpu_check.sh would run")
def test_gpu_check_exits_non_zero_at_once_with_the_reason_without_cuda(tmp_path):
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "OUT": str(tmp_path / "out"),
        "GPU_CHECK_WORK": str(tmp_path / "work"),
    }
    t0 = time.monotonic()
    proc = subprocess.run(
        ["bash", str(REPO / "scripts/gpu_check.sh")], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no CUDA GPU is visible to PyTorch" in proc.stderr and "measures nothing here" in proc.stderr
    assert time.monotonic() - t0 < 60  # one torch import, not a budget of steps
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()


def test_tensorrt_gpu_tests_skip_when_the_bindings_cannot_load_their_libraries(tmp_path):
    """pip's tensorrt bindings without TensorRT's libraries: ``import tensorrt`` raises ImportError. The
    GPU tests must skip and say so, on a host where CUDA works (faked here by a pytest plugin)."""
    site = tmp_path / "site"
    (site / "tensorrt").mkdir(parents=True)
    (site / "tensorrt" / "__init__.py").write_text(
        'raise ImportError("libnvinfer.so.11: cannot open shared object file: No such file or directory")\n'
    )
    (site / "fake_cuda.py").write_text(
        textwrap.dedent("""
        import torch

        torch.cuda.is_available = lambda: True
        """)
    )
    kept = [os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []  # carried wheels (a rehearsal)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO), *kept])}
    module = str(REPO / "tests/gpu/test_tensorrt.py")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "fake_cuda", "-p", "no:cacheprovider", "-q", "-rs", module],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=240,
    )
    assert proc.returncode == 5, proc.stdout + proc.stderr  # a module skipped whole: "no tests ran", not 2 (error)
    assert proc.stdout.strip().splitlines()[-1].startswith("1 skipped in")  # not "1 error"
    assert "cannot load its libraries: ImportError: libnvinfer.so.11" in proc.stdout


def test_the_gpu_report_carries_the_engine_and_decode_tools_reports_and_fails_a_failed_step(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    (work / "gpu.txt").write_text("NVIDIA H100 80GB HBM3, 81559 MiB, 580.00\n")
    (work / "steps.tsv").write_text("engine-wire\tok\t9\trc 0\ngpu-decode\tfailed\t3\trc 1\n")
    (work / "engine-wire.log").write_text("starting\nhost: AMD EPYC, 16 CPUs usable\n8 front ends: 9,000 req/s\n")
    (work / "gpu-decode.log").write_text("warming\nhost: AMD EPYC, NVIDIA H100\n   32  nvJPEG alone  9000  40.0\n")
    (work / "bench").mkdir()
    open_loop = {"rate": 4000.0, "img_per_s": 3998.5, "p50_ms": 3.1, "p99_ms": 17.25, "errors": 0}
    open_loop |= {"server_batch_size_mean": 12.5, "server_prepare_mean_ms": 1.25, "server_inference_mean_ms": 0.5}
    open_loop |= {"server_request_mean_ms": 2.4, "server_decoded": "cpu:12 declined:12 gpu:3986"}
    open_loop |= {"server_prepare_gpu_mean_ms": 0.875, "server_inference_gpu_mean_ms": 0.25}
    # A step where every request failed has null latencies in bench.json (loadtest/report.py).
    failed = {"concurrency": 1, "img_per_s": 0.0, "p50_ms": None, "p99_ms": None, "errors": 4}
    serving = {"backend": "torch on cuda:0, fp16", "http_workers": 15, "decode": "gpu", "decode_reason": "nvJPEG"}
    service = {"steps": [failed], "open_loop": open_loop, "serving": serving}
    bench = {"backends": {"torch": {"engine": [], "pipeline": [], "service": service}}}
    (work / "bench" / "bench.json").write_text(json.dumps(bench))
    run = subprocess.run(
        [sys.executable, "scripts/gpu_report.py", "--work", str(work), "--out", str(out), "--budget-s", "480"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1 and "not ok: gpu-decode" in run.stderr
    md = (out / "gpu_check.md").read_text()
    assert md.startswith("# GPU check: NVIDIA H100 80GB HBM3")
    wire = md.index("## The engine's own ceiling")
    decode = md.index("## The engine's GPU JPEG path without HTTP")
    assert "8 front ends: 9,000 req/s" in md[wire:decode] and "starting" not in md
    assert "32  nvJPEG alone  9000  40.0" in md[decode:] and "warming" not in md
    assert (
        "| torch | (c) service over HTTP, open loop at 4000 req/s | 3998 | 3.10 | 17.25 | 0 errors, mean batch "
        "12.5, per batch prepare 1.25 ms, infer 0.50 ms (on their CUDA streams 0.88 and 0.25 ms); the server's mean per "
        "request 2.40 ms; decoded "
        "cpu:12 declined:12 gpu:3986 |" in md
    )
    assert "torch (c) service over HTTP, open loop at 4000 req/s: 3998 img/s, p50 3.10 ms, p99 17.25 ms" in run.stdout
    assert "| torch | (c) service over HTTP, c=1 | 0 | - | - | 4 errors" in md
    assert "infer - ms; the server's" in md  # no CUDA stream spans said: none printed
    assert "torch (c) service over HTTP, c=1: 0 img/s, p50 - ms, p99 - ms" in run.stdout
    served = "(c) service torch: torch on cuda:0, fp16, 15 front end(s); JPEGs: nvJPEG"
    assert f"- {served}\n" in md and f"  {served}\n" in run.stdout


@pytest.mark.parametrize("required", [False, True])
def test_an_onnxruntime_cuda_provider_that_does_not_load_skips_unless_gpu_check_requires_it(monkeypatch, required):
    import onnxruntime as ort

    import service.backends
    from service.errors import BackendUnavailable
    from tests.conftest import select_onnxruntime_cuda

    def cannot_start(settings):
        raise BackendUnavailable("ONNX Runtime could not start its CUDA provider: libcudnn.so.9: cannot open")

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(service.backends, "select_backend", cannot_start)
    monkeypatch.setenv("REQUIRE_ORT_CUDA", "1" if required else "0")
    outcome = pytest.fail.Exception if required else pytest.skip.Exception
    with pytest.raises(outcome, match="ONNX Runtime's CUDA provider does not load here: .*libcudnn.so.9"):
        select_onnxruntime_cuda(Settings(backend="onnxruntime", device="cuda"))


@pytest.fixture
def fake_python(tmp_path) -> Path:
    """CUDA "available", no onnxruntime-gpu, every step a success at once; the bench leaves two server logs."""
    fake = tmp_path / "python"
    logs = '"$GPU_CHECK_WORK/bench/layout-1-front-end,-cpu-decode/logs"'
    fake.write_text(
        "#!/usr/bin/env bash\n"
        'case "$*" in\n'
        "  *torch.cuda.is_available*) exit 0 ;;\n"
        "  *get_available_providers*) exit 1 ;;\n"
        f'  *scripts/gpu_report.py*) exec {sys.executable} "$@" ;;\n'
        f'  *"-m loadtest.bench "*) mkdir -p {logs} "$GPU_CHECK_WORK/bench/logs"\n'
        f"    seq 1 500 | sed 's/^/server line /' > {logs}/service-4242.log\n"
        '    echo "naive ready" > "$GPU_CHECK_WORK/bench/logs/naive-4343.log" ;;\n'
        '  *) echo "fake step: $*" ;;\n'
        "esac\n"
    )
    fake.chmod(0o755)
    return fake


def test_gpu_check_runs_the_steps_gpu_check_steps_names_and_refuses_a_name_that_is_no_step(tmp_path, fake_python):
    """A device session short of time runs a subset: the rest is "skipped", not a failure; a typo is."""
    fake = fake_python

    def run(steps: str) -> tuple[int, dict[str, str]]:
        work = tmp_path / steps.replace(",", "+")
        env = {**os.environ, "PYTHON": str(fake), "GPU_CHECK_STEPS": steps, "GPU_CHECK_WORK": str(work)}
        env["OUT"] = str(tmp_path / "out")
        proc = subprocess.run(["bash", "scripts/gpu_check.sh"], cwd=REPO, env=env, capture_output=True, timeout=120)
        rows = [line.split("\t") for line in (work / "steps.tsv").read_text().splitlines()]
        return proc.returncode, {name: state for name, state, *_ in rows}

    rc, states = run("imports,gpu-decode")
    assert rc == 0 and states["imports"] == states["gpu-decode"] == "ok"
    assert states["bench-service"] == states["train-deterministic"] == "skipped"
    rc, states = run("imports,gpu-decod")
    assert rc == 1 and states["gpu-decod"] == "failed" and states["gpu-decode"] == "skipped"


def run_gpu_check(tmp_path: Path, fake_python: Path) -> tuple[list[str], str]:
    """Every step, with the fake: (the steps in the order they ran, gpu_check.log)."""
    work, out = tmp_path / "work", tmp_path / "out"
    env = {**os.environ, "PYTHON": str(fake_python), "GPU_CHECK_WORK": str(work), "OUT": str(out)}
    subprocess.run(["bash", "scripts/gpu_check.sh"], cwd=REPO, env=env, capture_output=True, timeout=120)
    ran = [line.split("\t")[0] for line in (work / "steps.tsv").read_text().splitlines()]
    return ran, (out / "gpu_check.log").read_text()


def test_gpu_check_log_ends_with_the_logs_of_the_servers_the_bench_started(tmp_path, fake_python):
    """A server's own log is where a traceback from the engine's GPU path is; each is cut to its two ends."""
    log = run_gpu_check(tmp_path, fake_python)[1]
    steps_end = log.index("######## server log")
    assert "######## bench-service.log" in log[:steps_end]  # after every step's own log
    assert "######## server log bench/logs/naive-4343.log (1 lines)\nnaive ready\n" in log[steps_end:]
    head = "######## server log bench/layout-1-front-end,-cpu-decode/logs/service-4242.log (500 lines)\n"
    kept = [f"server line {i}" for i in [*range(1, 61), *range(261, 501)]]
    assert head + "\n".join(kept[:60]) + "\n[... 200 lines cut ...]\n" + "\n".join(kept[60:]) + "\n" in log


def test_gpu_check_runs_its_steps_in_the_order_docs_gpu_md_lists(tmp_path, fake_python):
    """The order is the priority a spent budget cuts by: the script and its table must agree."""
    ran = run_gpu_check(tmp_path, fake_python)[0]
    doc = (REPO / "docs/gpu.md").read_text().split("## What it runs", 1)[1].split("\n## ", 1)[0]
    documented = [row.split("|")[1].strip() for row in doc.splitlines() if row.startswith("| ")][1:]
    assert len(documented) == 12 and ran == documented  # build-engine too: the fake imports tensorrt


@pytest.mark.parametrize("stop", ["SIGKILL to its process group", "SIGTERM to the script"])
def test_a_gpu_check_stopped_from_outside_leaves_the_report_of_every_step_that_finished(tmp_path, fake_python, stop):
    """The device tool's time limit stops the run: what it had measured must already be in $OUT, and a
    TERM also ends the running step's processes (a warm machine would run the next call beside them)."""
    hanging, step_pid = tmp_path / "python-hangs", tmp_path / "step.pid"
    hanging.write_text(  # the fp16 export never ends; everything before it is quick
        "#!/usr/bin/env bash\n"
        f'case "$*" in *"--precision fp16"*) echo $$ > {step_pid}; exec sleep 60 ;; esac\n'
        f'exec {fake_python} "$@"\n'
    )
    hanging.chmod(0o755)
    work, out = tmp_path / "work", tmp_path / "out"
    env = {**os.environ, "PYTHON": str(hanging), "GPU_CHECK_WORK": str(work), "OUT": str(out)}
    run = subprocess.Popen(["bash", "scripts/gpu_check.sh"], cwd=REPO, env=env, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_until(lambda: step_pid.exists() and step_pid.read_text().strip(), 60, "the fp16 export step to start")
        sleeper = int(step_pid.read_text())
        if stop.startswith("SIGKILL"):
            os.killpg(run.pid, signal.SIGKILL)  # no trap, no clean-up: only what was written before counts
        else:
            run.send_signal(signal.SIGTERM)
        assert run.wait(30) in (-signal.SIGKILL, 143)
        if stop.startswith("SIGTERM"):
            wait_until(lambda: not alive(sleeper), 10, "the stopped step's process to end")
    finally:
        with contextlib.suppress(ProcessLookupError, ValueError, OSError):
            os.kill(int(step_pid.read_text()), signal.SIGKILL)  # the step's own group outlives a SIGKILL
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)
        run.wait()
    report = json.loads((out / "gpu_check.json").read_text())
    assert [s["name"] for s in report["steps"]] == ["imports", "export-onnx"]
    assert {s["state"] for s in report["steps"]} == {"ok"}
    log = (out / "gpu_check.log").read_text()
    assert "######## imports.log" in log and "######## export-onnx.log" in log


@pytest.mark.skipif(torch.cuda.is_available(), reason="this host has a CUDA GPU: gpu_check.sh would run")
def test_a_rehearsal_runs_without_cuda_and_its_report_says_no_gpu_measured_it(tmp_path, fake_python):
    """scripts/gpu_rehearsal.sh: the same steps on a CPU host, under the device's package versions."""
    work, out = tmp_path / "work", tmp_path / "out"
    fake = tmp_path / "python-no-cuda"  # the shared fake, but without CUDA
    fake.write_text(
        f'#!/usr/bin/env bash\ncase "$*" in *torch.cuda.is_available*) exit 1 ;; esac\nexec {fake_python} "$@"\n'
    )
    fake.chmod(0o755)
    env = {**os.environ, "PYTHON": str(fake), "GPU_CHECK_WORK": str(work), "OUT": str(out)}
    env |= {"GPU_CHECK_REHEARSAL": "1", "GPU_CHECK_STEPS": "engine-wire"}
    proc = subprocess.run(
        ["bash", "scripts/gpu_check.sh"], cwd=REPO, capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["gpu"].startswith("NO GPU: a rehearsal on the CPU")
    assert [s["state"] for s in report["steps"] if s["name"] == "engine-wire"] == ["ok"]
    md = (out / "gpu_check.md").read_text()
    assert "NO GPU: a rehearsal" in md and "no figure below is a GPU's" in md and "measured on this GPU" not in md
