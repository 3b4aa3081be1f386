"""Flag and environment text is parsed by pydantic, strictly: a typo is an error that names the flag,
its variable and the text given, never a silent default. Through ``python -m service`` itself."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from pydantic import ValidationError

from service.__main__ import settings_from_args, unknown_variables
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
    assert "must not exceed --queue-capacity" in result.stderr and "s3cret" not in result.stderr


def test_a_rule_across_settings_names_their_flags_and_variables():
    result = run_service("--queue-capacity", "4", env={"ALEXNET_MAX_IMAGES_PER_REQUEST": "8"})
    assert result.returncode == 2
    assert (
        "--max-images-per-request / ALEXNET_MAX_IMAGES_PER_REQUEST (8) must not exceed "
        "--queue-capacity / ALEXNET_QUEUE_CAPACITY (4)"
    ) in result.stderr
    assert "max_images_per_request" not in result.stderr and "queue_capacity" not in result.stderr


@pytest.mark.parametrize("args", [["--api-key", "s3cret"], ["--api-key=s3cret"], ["--api-key"]])
def test_the_api_key_as_a_flag_is_refused_naming_its_variable_without_echoing_it(args):
    result = run_service(*args)
    assert result.returncode == 2
    assert "--api-key is not accepted" in result.stderr and "set ALEXNET_API_KEY in the environment" in result.stderr
    assert "s3cret" not in result.stderr


def test_an_unknown_variable_is_warned_about_once_with_the_closest_setting():
    # An invalid rule across settings stops the service right after the warnings: nothing starts.
    result = run_service(
        "--queue-capacity",
        "4",
        "--max-images-per-request",
        "8",
        env={"ALEXNET_MAX_BATCH": "64", "ALEXNET_FROBNICATE": "s3cret", "ALEXNET_MODEL_DIR": "models"},
    )
    assert result.returncode == 2
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: ALEXNET_FROBNICATE is not a setting and is ignored",
        "warning: ALEXNET_MAX_BATCH is not a setting and is ignored; "
        "did you mean --max-batch-size / ALEXNET_MAX_BATCH_SIZE?",
    ], result.stderr
    assert "s3cret" not in result.stderr


def test_variables_read_elsewhere_and_in_any_case_are_not_unknown():
    assert unknown_variables({"ALEXNET_MODEL_DIR": "/models", "alexnet_port": "1", "PATH": "/bin"}) == []
    assert unknown_variables({"ALEXNET_API_KEYS": "x", "ALEXNET_MODELDIR": "x"}) == [
        "warning: ALEXNET_API_KEYS is not a setting and is ignored; did you mean ALEXNET_API_KEY?",
        "warning: ALEXNET_MODELDIR is not a setting and is ignored; did you mean --model-dir / ALEXNET_MODEL_DIR?",
    ]


def test_every_alexnet_variable_the_repository_names_is_known():
    """Every ALEXNET_* variable a script, manifest or page names is a setting (ALEXNET_MODEL_DIR too)."""
    named = set()
    for folder in ("service", "export", "model", "loadtest", "scripts", "deploy", "docs"):
        for path in (REPO / folder).rglob("*"):
            if path.is_file() and path.suffix in {".py", ".sh", ".md", ".yaml", ".yml", ".toml"}:
                named |= set(re.findall(r"\bALEXNET_[A-Z0-9_]*[A-Z0-9]", path.read_text(errors="replace")))
    for path in [*REPO.glob("Dockerfile*"), REPO / "Makefile", REPO / "README.md"]:
        named |= set(re.findall(r"\bALEXNET_[A-Z0-9_]*[A-Z0-9]", path.read_text()))
    named.discard("ALEXNET_MAX_BATCH")  # the README's example of a typo that gets the warning
    assert "ALEXNET_MODEL_DIR" in named and "ALEXNET_PORT" in named
    assert unknown_variables(dict.fromkeys(named, "")) == []


def test_a_setting_of_two_types_fails_in_one_line():
    result = run_service("--http-workers", "four")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if "ALEXNET_HTTP_WORKERS" in line]
    assert len(lines) == 1, result.stderr
    assert "valid integer" in lines[0] and " or Input should be 'auto'" in lines[0] and "got 'four'" in lines[0]


@pytest.mark.parametrize("args", [["--port", "99999"], ["--http-workers", "0"], ["--max-batch-size", "0"]])
def test_an_invalid_setting_is_the_one_line_even_where_other_defaults_are_made_from_it(args):
    """--onnx and --engine default to files in --model-dir: pydantic does not make them once any
    setting failed, and says so for each; that is not theirs to report."""
    result = run_service(*args)
    assert result.returncode == 2
    reasons = [line for line in result.stderr.splitlines() if line.startswith("  --")]
    assert len(reasons) == 1 and reasons[0].startswith(f"  {args[0]} / "), result.stderr


def test_front_ends_beyond_what_the_cpus_can_use_are_refused(monkeypatch):
    """1000 front ends on 2 CPUs ran the host out of memory (each holds some 70 MB)."""
    monkeypatch.setattr("service.settings.usable_cpus", lambda: 2)
    assert settings_from_args(["--http-workers", "8"]).frontends == 8
    with pytest.raises(ValidationError, match=r"must be at most 8 \(4 per CPU this process may use, 2 here"):
        settings_from_args(["--http-workers", "9"])
    monkeypatch.setattr("service.settings.usable_cpus", lambda: 16)
    assert settings_from_args(["--http-workers", "64"]).frontends == 64


def test_an_empty_checkpoint_means_none():
    assert settings_from_args(["--checkpoint", ""]).checkpoint is None
    assert settings_from_args(["--checkpoint", "w.pt"]).checkpoint is not None
