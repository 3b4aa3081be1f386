"""model/distributed.py under torchrun on CUDA, with the CUDA calls faked (no GPU here): a process
whose LOCAL_RANK has no GPU is refused in one line, before it touches CUDA or the process group."""

from __future__ import annotations

import pytest
import torch

from model import distributed, train


def _torchrun(monkeypatch, local_rank: int, gpus: int) -> list[str]:
    """torchrun's environment for rank ``local_rank`` of 4 on a host with ``gpus`` GPUs; returns the
    CUDA and process-group calls made."""
    for name, value in (("RANK", local_rank), ("WORLD_SIZE", 4), ("LOCAL_RANK", local_rank)):
        monkeypatch.setenv(name, str(value))
    calls: list[str] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(f"set_device({device})"))
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda **kwargs: calls.append("init_process_group"))
    return calls


def test_each_process_takes_gpu_local_rank(monkeypatch):
    calls = _torchrun(monkeypatch, local_rank=1, gpus=2)
    info, device = distributed.init_distributed("cuda")
    assert (info.rank, info.world_size, device) == (1, 4, torch.device("cuda", 1))
    assert calls == ["set_device(cuda:1)", "init_process_group"]


def test_more_processes_than_gpus_is_refused(monkeypatch):
    calls = _torchrun(monkeypatch, local_rank=2, gpus=2)
    with pytest.raises(SystemExit) as exited:
        distributed.init_distributed("cuda")
    assert exited.value.code == (
        "error: --device cuda under torchrun: LOCAL_RANK 2, but this host sees 2 GPU(s); "
        "start one process per GPU (--nproc-per-node 2)"
    )
    assert calls == []  # nothing touched: no raw CUDA error, no rank waiting in the rendezvous for it


def test_the_command_line_says_it_in_one_line_with_exit_2(monkeypatch, tmp_path, capsys):
    _torchrun(monkeypatch, local_rank=3, gpus=1)
    for split in ("train", "val"):
        (tmp_path / "data" / split).mkdir(parents=True)
    argv = ["--data-path", str(tmp_path / "data"), "--output-dir", str(tmp_path / "run"), "--device", "cuda"]
    assert train.cli(argv) == 2
    assert capsys.readouterr().err == (
        "error: --device cuda under torchrun: LOCAL_RANK 3, but this host sees 1 GPU(s); "
        "start one process per GPU (--nproc-per-node 1)\n"
    )
