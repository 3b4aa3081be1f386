"""model/help_format.py: every CLI's --help shows a flag's default once, and only a real one."""

from __future__ import annotations

import re

import pytest

import loadtest.__main__ as loadtest_main
from export import bench_quantized, quantize, to_onnx, to_trt
from loadtest import bench, client_ceiling, engine_wire, soak
from model import train


@pytest.mark.parametrize(
    "module",
    [to_onnx, quantize, to_trt, bench_quantized, train, loadtest_main, bench, client_ceiling, soak, engine_wire],
    ids=lambda m: m.__name__,
)
def test_help_shows_no_empty_or_doubled_default(module):
    text = " ".join(module.get_args_parser().format_help().split())  # unwrapped
    assert "(default: None)" not in text
    assert "(default: )" not in text and "(default: [" not in text  # empty, or a list as Python prints it
    assert not re.search(r"\(default[^)]*\)\s*\(default", text), text


def test_real_defaults_are_still_shown():
    text = " ".join(to_onnx.get_args_parser().format_help().split())
    assert "ONNX opset (default: 18)" in text and "(default: fp32)" in text
    text = " ".join(train.get_args_parser().format_help().split())
    assert "--data-path DATA_PATH directory with train/<class>/ and val/<class>/ --" in text  # required: none
    assert "(default: the --resume checkpoint's, else the arch's, 256) --" in text  # the help's own words, once


def test_the_engine_probe_shows_its_defaults():
    text = " ".join(engine_wire.get_args_parser().format_help().split())
    assert "front-end processes (default: 2)" in text and "per front end (default: 64)" in text


def test_list_defaults_read_as_they_are_typed():
    text = " ".join(loadtest_main.get_args_parser().format_help().split())
    assert "(default: 1,2,4,8,16,32)" in text  # --concurrency 1,2,4 on the command line
    from model import bench_train

    text = " ".join(bench_train.get_args_parser().format_help().split())
    assert re.search(r"--precisions .*? \(default: fp32 bf16( fp16)?\)", text), text  # --precisions fp32 bf16


def test_the_service_help_writes_defaults_as_a_flag_takes_them():
    from service.__main__ import get_args_parser

    text = " ".join(get_args_parser().format_help().split())
    for python_literal in ("(default: None;", "(default: True;", "(default: False;", "(default: ;"):
        assert python_literal not in text
    assert "--warmup {true,false}" in text and "(default: true; env ALEXNET_WARMUP)" in text
    assert "(default: none; env ALEXNET_CHECKPOINT)" in text and "(default: ''; env ALEXNET_CORS_ORIGINS)" in text


def test_the_weights_cli_help(capsys):
    from model.weights import main

    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text and "(default: False)" not in text
    assert "(default: artifacts/alexnet.pt)" in text
