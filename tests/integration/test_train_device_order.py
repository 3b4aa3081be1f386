"""``python -m model.train --resume`` loads the optimizer's state only once the model is on its device.

SGD's ``load_state_dict`` puts each momentum buffer on the device of its parameter as it finds it at
that moment: loaded while the model is still on the CPU and moved to CUDA afterwards, the buffers stay
on the CPU and the first step on a GPU fails. A CPU host cannot see that failure, so the test records
the order of the two calls in a real (tiny) resumed run.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from model import train

pytestmark = pytest.mark.slow

SMALL = ["--device", "cpu", "--resize-size", "72", "--crop-size", "64", "--workers", "0", "--print-every-s", "30"]


def test_resume_moves_the_model_to_its_device_before_loading_the_optimizer_state(tiny4, tmp_path, monkeypatch):
    common = [*SMALL, "--data-path", str(tiny4), "--batch-size", "8", "--ten-crop", "never"]
    out = tmp_path / "run"
    train.main(train.get_args_parser().parse_args([*common, "--output-dir", str(out), "--epochs", "1"]))

    events: list[str] = []
    module_to, optimizer_load = nn.Module.to, torch.optim.Optimizer.load_state_dict

    def to(self, *args, **kwargs):
        if any(isinstance(a, torch.device | str) for a in (*args, *kwargs.values())):
            events.append(f"{type(self).__name__}.to(device)")
        return module_to(self, *args, **kwargs)

    def load_state_dict(self, state_dict):
        events.append("optimizer.load_state_dict")
        return optimizer_load(self, state_dict)

    monkeypatch.setattr(nn.Module, "to", to)
    monkeypatch.setattr(torch.optim.Optimizer, "load_state_dict", load_state_dict)
    argv = [*common, "--output-dir", str(out), "--epochs", "2", "--resume", str(out / "checkpoint.pt")]
    resumed = train.main(train.get_args_parser().parse_args(argv))

    assert resumed["epoch"] == 1
    # The old order was ['optimizer.load_state_dict', 'AlexNet.to(device)'].
    assert events.index("AlexNet.to(device)") < events.index("optimizer.load_state_dict"), events
