"""Settings from flags and environment; backend selection and its reasons."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from service.__main__ import ENV_ONLY, exposure_warning, get_args_parser, settings_from_args
from service.backends import select_backend
from service.backends.torch import cuda_graph_buckets
from service.errors import BackendUnavailable
from service.settings import Settings
from tests.fakes import fake_checkpoint


def test_flags_override_environment_which_overrides_defaults(monkeypatch):
    monkeypatch.setenv("ALEXNET_MAX_BATCH_SIZE", "16")
    monkeypatch.setenv("ALEXNET_PORT", "9000")
    settings = settings_from_args(["--port", "8001", "--jpeg-draft", "false"])
    assert settings.port == 8001 and settings.max_batch_size == 16 and settings.jpeg_draft is False
    assert Settings().max_delay_ms == 2.0


def test_the_model_files_default_to_the_model_dir_unless_named(monkeypatch, tmp_path):
    monkeypatch.setenv("ALEXNET_MODEL_DIR", str(tmp_path / "env"))
    settings = settings_from_args([])
    assert (settings.onnx, settings.engine) == (tmp_path / "env/alexnet.onnx", tmp_path / "env/alexnet.plan")
    settings = settings_from_args(["--model-dir", str(tmp_path / "flag")])  # the flag wins, as always
    assert (settings.onnx, settings.engine) == (tmp_path / "flag/alexnet.onnx", tmp_path / "flag/alexnet.plan")
    monkeypatch.setenv("ALEXNET_ENGINE", "/elsewhere.plan")
    settings = settings_from_args(["--onnx", "mine.onnx"])
    assert (settings.onnx, settings.engine) == (Path("mine.onnx"), Path("/elsewhere.plan"))
    monkeypatch.delenv("ALEXNET_MODEL_DIR")
    assert Settings().onnx == Path("artifacts/alexnet.onnx")
    assert "default: artifacts/alexnet.onnx" in " ".join(get_args_parser().format_help().split())


def test_a_model_dir_without_the_onnx_file_stops_the_server_under_auto(monkeypatch, tmp_path, capsys):
    """Named by hand, a model dir holding no model is a typo or an empty volume: auto would serve an
    untrained PyTorch model instead. Not a variable silently ignored either, as it was before it was a setting."""
    from service.__main__ import main

    monkeypatch.setenv("ALEXNET_MODEL_DIR", str(tmp_path))
    assert main(["--port", "0"]) == 2
    err = capsys.readouterr().err
    assert f"--model-dir / ALEXNET_MODEL_DIR: {tmp_path} holds no alexnet.onnx" in err
    assert "python -m service.entrypoint" in err and "is not a setting" not in err


def test_the_api_key_is_read_from_the_environment_only(monkeypatch):
    monkeypatch.setenv("ALEXNET_API_KEY", "s3cret")
    assert settings_from_args([]).api_key.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings_from_args([]))
    with pytest.raises(SystemExit):
        settings_from_args(["--api-key", "x"])


@pytest.mark.parametrize(
    ("host", "key", "warned"),
    [
        ("0.0.0.0", None, "every interface"),
        ("::", None, "every interface"),
        ("10.1.2.3", None, "10.1.2.3"),
        ("myhost.example", None, "myhost.example"),
        ("0.0.0.0", "s3cret", None),
        ("127.0.0.1", None, None),
        ("::1", None, None),
        ("localhost", None, None),
    ],
)
def test_listening_beyond_this_host_without_a_key_is_warned_of(monkeypatch, host, key, warned):
    monkeypatch.delenv("ALEXNET_API_KEY", raising=False)
    if key:
        monkeypatch.setenv("ALEXNET_API_KEY", key)
    text = exposure_warning(settings_from_args(["--host", host, "--port", "8123"]))
    if warned is None:
        assert text is None
    else:
        assert text.startswith(f"listening on {warned} with no API key: anyone who can reach port 8123")
        assert "ALEXNET_API_KEY" in text and "--host 127.0.0.1" in text


def test_an_api_key_from_a_secret_file_ending_in_a_newline_is_the_key_clients_send(monkeypatch):
    """Kubernetes' --from-file secrets end in a newline; a client's token is compared stripped."""
    import asyncio

    from service.middleware import BearerAuth

    monkeypatch.setenv("ALEXNET_API_KEY", " k3y\n")
    key = settings_from_args([]).api_key.get_secret_value()
    assert key == "k3y"
    statuses = []

    async def app(scope, receive, send):
        statuses.append(200)

    async def send(message):
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    guard = BearerAuth(app, key, frozenset(), observe=lambda *a, **k: None)
    for token in (b"k3y", b"k3y ", b"nope"):
        scope = {
            "type": "http",
            "path": "/classify",
            "method": "POST",
            "headers": [(b"authorization", b"Bearer " + token)],
        }
        asyncio.run(guard(scope, None, send))
    assert statuses == [200, 200, 401]


@pytest.mark.parametrize("blank", ["", "  "])
def test_an_api_key_set_but_empty_is_refused_not_required_nor_ignored(monkeypatch, blank):
    monkeypatch.setenv("ALEXNET_API_KEY", blank)
    with pytest.raises(ValidationError, match="set but empty: give the key, or unset ALEXNET_API_KEY"):
        settings_from_args([])


def test_an_api_key_no_header_can_carry_is_refused_without_echoing_it(monkeypatch, capsys):
    """Every request would get 401: no client can send a line end or a control character in a header."""
    from service.__main__ import main

    monkeypatch.setenv("ALEXNET_API_KEY", "s3c\nret")
    assert main(["--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "ALEXNET_API_KEY: holds control characters, which an HTTP header cannot carry" in err
    assert "s3c" not in err


def test_the_load_tools_send_the_key_as_the_service_reads_it(monkeypatch):
    """One rule (service.settings.clean_api_key): what loadtest sends is what the service compares with."""
    from loadtest.auth import api_key_from_env

    for raw in ("k3y", " k3y\n", "\tk 3y  "):
        monkeypatch.setenv("ALEXNET_API_KEY", raw)
        assert api_key_from_env() == settings_from_args([]).api_key.get_secret_value()


def test_an_onnx_named_by_hand_that_is_missing_stops_the_server_under_auto(monkeypatch, tmp_path, capsys):
    """auto would serve PyTorch instead; with a backend named by hand the engine fails to load it and
    the server exits 3 (tests/integration/test_processes.py)."""
    from service.__main__ import main

    missing = tmp_path / "typo.onnx"
    assert main(["--onnx", str(missing), "--port", "0"]) == 2
    assert f"{missing} is not a file" in capsys.readouterr().err
    monkeypatch.setenv("ALEXNET_ONNX", str(missing))
    assert main(["--port", "0"]) == 2
    capsys.readouterr()
    # A folder (where the file is) gets the file to pass, not "build it with --out <the folder>"
    assert main(["--onnx", str(tmp_path), "--port", "0"]) == 2
    assert f"{tmp_path} is a folder; pass the ONNX file, e.g. {tmp_path / 'alexnet.onnx'}" in capsys.readouterr().err


def test_a_checkpoint_that_is_not_a_file_stops_the_server_whatever_the_backend(monkeypatch, tmp_path, capsys):
    """The ONNX backends would never read it: a typo would serve the ONNX file's weights without a word."""
    from service.__main__ import main

    missing = tmp_path / "typo.pt"
    for backend in ("auto", "onnxruntime", "torch"):
        assert main(["--checkpoint", str(missing), "--backend", backend, "--port", "0"]) == 2
        assert f"--checkpoint / ALEXNET_CHECKPOINT: {missing} is not a file" in capsys.readouterr().err
    monkeypatch.setenv("ALEXNET_CHECKPOINT", str(tmp_path))  # a directory is not a checkpoint either
    assert main(["--port", "0"]) == 2


@pytest.mark.parametrize(
    "args",
    [
        ["--device", "cuda"],
        ["--decode", "gpu"],
        ["--backend", "tensorrt"],
        ["--precision", "fp16"],
        ["--device", "cuda", "--decode", "gpu"],
    ],
)
def test_settings_that_need_a_gpu_on_a_host_without_one_stop_at_once(monkeypatch, capsys, args):
    """Before any process starts: a server up but never ready would hide it until someone looked."""
    import service.__main__
    from service.__main__ import main

    monkeypatch.setattr(service.__main__, "cuda_visible", lambda: False)
    assert main([*args, "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "a CUDA GPU, but PyTorch sees none on this host" in err
    assert all(
        f"{args[i]} {args[i + 1]} (ALEXNET_{args[i][2:].upper()}={args[i + 1]})" in err for i in range(0, len(args), 2)
    )


@pytest.mark.parametrize("args", [["--decode", "gpu"], ["--backend", "tensorrt"], ["--precision", "fp16"]])
def test_settings_that_need_a_gpu_with_device_cpu_stop_at_once_on_any_host(capsys, args):
    from service.__main__ import main

    assert main([*args, "--device", "cpu", "--port", "0"]) == 2
    assert "needs a CUDA GPU, but --device cpu (ALEXNET_DEVICE=cpu) keeps" in capsys.readouterr().err


@pytest.mark.parametrize("backend, passes", [("auto", True), ("onnxruntime", True), ("torch", False)])
def test_fp16_passes_the_early_check_without_a_gpu_only_for_an_fp16_onnx_on_onnxruntime(
    tmp_path, monkeypatch, backend, passes
):
    """ONNX Runtime on the CPU serves an ONNX that is fp16 itself; every other fp16 without a GPU would
    start the processes only for the engine to refuse it (exit 3)."""
    import service.__main__
    from service.__main__ import needs_a_gpu
    from tests.tiny_onnx import tiny_onnx

    monkeypatch.setattr(service.__main__, "cuda_visible", lambda: False)
    fp16 = tiny_onnx(tmp_path / "alexnet.fp16.onnx", precision="fp16")
    fp32 = tiny_onnx(tmp_path / "alexnet.onnx")
    assert (needs_a_gpu(Settings(onnx=fp16, precision="fp16", backend=backend)) is None) is passes
    assert needs_a_gpu(Settings(onnx=fp32, precision="fp16", backend=backend)) is not None
    (tmp_path / "not.onnx").write_bytes(b"\x00not onnx")
    assert needs_a_gpu(Settings(onnx=tmp_path / "not.onnx", precision="fp16", backend=backend)) is not None


def test_the_supervisor_asks_a_child_process_whether_there_is_a_gpu_and_keeps_torch_out():
    """The answer here (no CUDA on a CPU host), without importing torch into this process's supervisor."""
    import subprocess
    import sys

    code = "import sys; from service.__main__ import cuda_visible; print(cuda_visible(), 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    import torch

    assert out.stdout.split() == [str(torch.cuda.is_available()), "False"]


def test_gpu_settings_pass_the_early_check_where_there_is_a_gpu(monkeypatch):
    import service.__main__
    from service.__main__ import needs_a_gpu

    monkeypatch.setattr(service.__main__, "cuda_visible", lambda: True)
    assert needs_a_gpu(Settings(device="cuda", decode="gpu", backend="tensorrt")) is None
    monkeypatch.setattr(service.__main__, "cuda_visible", lambda: False)
    assert needs_a_gpu(Settings()) is None  # auto asks for nothing


@pytest.mark.parametrize("backend", ["onnxruntime", "auto"])
def test_an_onnx_holding_other_weights_than_the_checkpoint_is_refused(tmp_path, backend):
    """Not skipped under auto either: PyTorch would serve the checkpoint on a slower path, unasked."""
    from service.errors import WrongWeights
    from tests.tiny_onnx import tiny_onnx

    onnx = tiny_onnx(tmp_path / "alexnet.onnx", weights_sha256="c" * 64)
    checkpoint = fake_checkpoint(tmp_path / "my.pt", "d" * 64)
    settings = Settings(onnx=onnx, checkpoint=checkpoint, backend=backend, device="cpu")
    with pytest.raises(WrongWeights) as refused:
        select_backend(settings)
    message = str(refused.value)
    assert message.startswith(f"--checkpoint: {onnx} holds weights 'test'")
    assert f"not those of {checkpoint}" in message
    assert f"python export/to_onnx.py --checkpoint {checkpoint} --out {onnx}" in message
    assert "--backend torch" in message


def test_auto_never_falls_back_to_pytorch_with_other_weights_than_the_onnx_files(tmp_path, monkeypatch, caplog):
    """Without ONNX Runtime (a plain ``pip install .``) and without the checkpoint, PyTorch could only
    serve a random model in place of the exported one: under auto that is refused, saying what to do;
    --backend torch serves it, as asked, with a warning."""
    import service.backends
    from tests.tiny_onnx import tiny_onnx

    onnx = tiny_onnx(tmp_path / "alexnet.onnx", weights_sha256="c" * 64)  # trained weights, say

    def not_installed(settings, device):
        raise BackendUnavailable("onnxruntime is not installed: install the project with an extra")

    monkeypatch.setitem(service.backends.BUILDERS, "onnxruntime", not_installed)
    with pytest.raises(BackendUnavailable) as refused:
        select_backend(Settings(onnx=onnx, backend="auto", device="cpu"))
    torch_said = str(refused.value).split("'torch': ")[1]
    assert "PyTorch's weights (untrained) differ from" in torch_said and "pip install '.[cpu]'" in torch_said
    assert "--checkpoint" in torch_said and "--backend torch" in torch_said
    selection = select_backend(Settings(onnx=onnx, backend="torch", device="cpu"))
    assert selection.metadata.weights == "untrained" and "as --backend torch asks" in caplog.text


def test_the_arch_setting_names_the_layouts_the_model_knows():
    from typing import get_args

    from model.alexnet import ARCHS
    from service.settings import ArchName

    assert sorted(get_args(ArchName)) == sorted(ARCHS)
    with pytest.raises(ValidationError, match="arch"):
        Settings(arch="bogus")


def test_an_arch_asked_for_but_not_served_is_warned_about(tmp_path, caplog):
    from tests.tiny_onnx import tiny_onnx

    onnx = tiny_onnx(tmp_path / "alexnet.onnx", untrained=True)  # records torchvision's layout
    selection = select_backend(Settings(onnx=onnx, backend="torch", device="cpu", arch="alexnet2012"))
    assert selection.metadata.arch == "torchvision"
    assert f"--arch alexnet2012 is not what is served: {onnx} records torchvision" in caplog.text


def test_an_onnx_that_preprocesses_otherwise_than_the_checkpoint_was_trained_is_refused(tmp_path):
    """The right weights behind the wrong crop answer wrongly too: the service preprocesses by the
    ONNX metadata (here the arch's 256/224, from an export made before it carried the recorded sizes)."""
    from service.errors import WrongWeights
    from tests.tiny_onnx import tiny_onnx

    onnx = tiny_onnx(tmp_path / "alexnet.onnx", weights_sha256="d" * 64)
    checkpoint = fake_checkpoint(tmp_path / "my.pt", "d" * 64, resize_size=72, crop_size=64)
    with pytest.raises(WrongWeights) as refused:
        select_backend(Settings(onnx=onnx, checkpoint=checkpoint, backend="auto", device="cpu"))
    message = str(refused.value)
    assert "(crop, resize, mean, std) (224, 256" in message and "was trained with (64, 72" in message
    assert f"python export/to_onnx.py --checkpoint {checkpoint} --out {onnx}" in message


def test_an_onnx_holding_the_checkpoints_weights_is_served(tmp_path):
    from tests.tiny_onnx import tiny_onnx

    onnx = tiny_onnx(tmp_path / "alexnet.onnx", weights_sha256="d" * 64)
    checkpoint = fake_checkpoint(tmp_path / "my.pt", "d" * 64)
    selection = select_backend(Settings(onnx=onnx, checkpoint=checkpoint, backend="onnxruntime", device="cpu"))
    assert selection.backend.name == "onnxruntime" and selection.metadata.weights_sha256 == "d" * 64


def test_help_lists_every_setting_with_its_default_and_variable():
    text = get_args_parser().format_help()
    for name in set(Settings.model_fields) - ENV_ONLY:
        assert "--" + name.replace("_", "-") in text
        assert f"ALEXNET_{name.upper()}" in text


@pytest.mark.parametrize("args", [["--backend", "magic"], ["--max-batch-size", "0"]])
def test_invalid_values_are_refused(args):
    with pytest.raises((SystemExit, ValidationError)):
        settings_from_args(args)


def test_a_request_larger_than_the_queue_is_a_configuration_error():
    with pytest.raises(ValidationError, match=r"must not exceed --queue-capacity / ALEXNET_QUEUE_CAPACITY \(4\)"):
        Settings(queue_capacity=4, max_images_per_request=8)


def test_auto_picks_onnxruntime_on_a_cpu_host_and_says_why(onnx_model):
    selection = select_backend(Settings(onnx=onnx_model))
    assert selection.backend.name == "onnxruntime" and selection.backend.device == "cpu"
    assert "tensorrt" in selection.skipped and "auto on cpu" in selection.reason
    assert selection.metadata.weights == "untrained" and len(selection.metadata.labels) == 1000


def test_auto_falls_back_to_torch_without_an_onnx_file(tmp_path):
    selection = select_backend(Settings(onnx=tmp_path / "missing.onnx"))
    assert selection.backend.name == "torch"
    assert "no ONNX model" in selection.skipped["onnxruntime"]


def test_torch_and_onnxruntime_backends_agree(onnx_model):
    ort_backend = select_backend(Settings(onnx=onnx_model, backend="onnxruntime")).backend
    torch_backend = select_backend(Settings(onnx=onnx_model, backend="torch")).backend
    batch = np.random.default_rng(0).standard_normal((3, 3, 224, 224)).astype(np.float32)
    np.testing.assert_allclose(ort_backend.infer(batch), torch_backend.infer(batch), atol=1e-4)


def test_asking_for_tensorrt_without_a_gpu_names_what_is_missing(onnx_model):
    with pytest.raises(BackendUnavailable, match="CUDA|tensorrt"):
        select_backend(Settings(onnx=onnx_model, backend="tensorrt"))


def test_asking_for_cuda_without_a_gpu_is_refused(onnx_model):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this host has a CUDA GPU")
    with pytest.raises(BackendUnavailable, match="no CUDA GPU"):
        select_backend(Settings(onnx=onnx_model, device="cuda"))


@pytest.mark.parametrize("backend", ["onnxruntime", "torch", "auto"])
def test_an_explicit_fp16_on_the_cpu_is_refused_not_served_in_fp32(onnx_model, backend):
    with pytest.raises(BackendUnavailable, match="precision fp16 was asked for") as refused:
        select_backend(Settings(onnx=onnx_model, backend=backend, device="cpu", precision="fp16"))
    if backend == "auto":  # every backend said why
        message = str(refused.value)
        assert message.startswith("no backend can run on this host")
        assert "'onnxruntime': 'precision fp16" in message and "'torch': 'precision fp16" in message
    for precision in ("auto", "fp32"):  # both mean fp32 here, and say so in /v1/models
        assert (
            select_backend(
                Settings(onnx=onnx_model, backend=backend, device="cpu", precision=precision)
            ).backend.precision
            == "fp32"
        )


def test_cuda_graph_buckets_cover_every_batch_size():
    assert cuda_graph_buckets(32) == (1, 2, 4, 8, 16, 32)
    assert cuda_graph_buckets(48) == (1, 2, 4, 8, 16, 32, 48)
