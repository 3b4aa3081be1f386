"""Flag and environment text is parsed by pydantic, strictly: a typo is an error that names the flag,
its variable and the text given, never a silent default. Through ``python -m service`` itself."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from service.__main__ import settings_from_args
from tests.conftest import REPO


def run_service(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "service", "--port", "0", *args],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("flag", ["--jpeg-draft", "--warmup", "--open-health", "--open-metrics"])
def test_a_misspelt_boolean_flag_fails_naming_the_flag_and_the_text(flag):
    result = run_service(flag, "flase")
    assert result.returncode == 2, result.stderr
    name = flag.removeprefix("--").replace("-", "_").upper()
    assert f"{flag} / ALEXNET_{name}: Input should be a valid boolean" in result.stderr
    assert "got 'flase'" in result.stderr
    assert "listening" not in result.stderr  # nothing started


def test_a_misspelt_environment_variable_fails_the_same_way():
    result = run_service(env={"ALEXNET_WARMUP": "ture"})
    assert result.returncode == 2
    assert "--warmup / ALEXNET_WARMUP: Input should be a valid boolean" in result.stderr and "'ture'" in result.stderr


@pytest.mark.parametrize(
    ("text", "value"), [("false", False), ("0", False), ("no", False), ("true", True), ("1", True)]
)
def test_the_spellings_pydantic_accepts_are_read_as_meant(text, value):
    assert settings_from_args(["--warmup", text]).warmup is value


def test_the_api_key_is_never_echoed():
    # Any text is a valid key; the message rule matters for a rule across settings that fails beside it.
    result = run_service("--queue-capacity", "4", "--max-images-per-request", "8", env={"ALEXNET_API_KEY": "s3cret"})
    assert result.returncode == 2
    assert "must not exceed queue_capacity" in result.stderr and "s3cret" not in result.stderr


def test_a_setting_of_two_types_fails_in_one_line():
    result = run_service("--http-workers", "four")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if "ALEXNET_HTTP_WORKERS" in line]
    assert len(lines) == 1, result.stderr
    assert "valid integer" in lines[0] and " or Input should be 'auto'" in lines[0] and "got 'four'" in lines[0]


def test_an_empty_checkpoint_means_none():
    assert settings_from_args(["--checkpoint", ""]).checkpoint is None
    assert settings_from_args(["--checkpoint", "w.pt"]).checkpoint is not None
