"""Hostile input: the nasty-file corpus through HTTP, schemathesis over the OpenAPI schema, and a
short coverage-guided fuzz run of decoding. Longer runs: see docs/hardening.md."""

from __future__ import annotations

import importlib.util
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, require_or_skip
from tests.corpus.make_nasty import EXPECTED, build

pytestmark = pytest.mark.integration
NASTY = REPO / "tests" / "corpus" / "nasty"


def test_the_committed_corpus_is_what_the_generator_writes():
    built = build()
    for name, data in built.items():
        assert (NASTY / name).read_bytes() == data, f"{name} differs: run python tests/corpus/make_nasty.py"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_nasty_file_gets_its_expected_answer_and_never_a_500(onnx_server, name):
    data = (NASTY / name).read_bytes()
    r = httpx.post(onnx_server.url + "/classify", files={"file": (name, data, "application/octet-stream")}, timeout=60)
    assert r.status_code == EXPECTED[name], r.text
    if r.status_code == 200:
        assert len(r.json()["results"][0]["predictions"]) == 5
    else:
        assert set(r.json()) == {"error", "kind"}
    assert httpx.get(onnx_server.url + "/readyz").status_code == 200


def test_schemathesis_finds_no_server_error_and_every_answer_matches_the_schema(onnx_server, tmp_path):
    st = Path(sys.executable).with_name("schemathesis")  # the dev extra's, beside this Python
    require_or_skip(st.is_file(), "schemathesis is not installed (pip install -e '.[dev]')")
    # The served model's name and version in every path, so the /v2 model routes get past their 404.
    config = tmp_path / "schemathesis.toml"
    config.write_text('[parameters]\n"path.model_name" = "alexnet"\n"path.model_version" = "1"\n')
    result = subprocess.run(
        [
            str(st),
            "--config-file",
            str(config),
            "run",
            onnx_server.url + "/openapi.json",
            # No 5xx; every answer's status, content type and body as the OpenAPI document declares.
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--max-examples",
            "25",
            "--seed",
            "1",
            "--request-timeout",
            "30",
            "--phases",
            "examples,coverage,fuzzing",
            "--exclude-checks",
            "positive_data_acceptance",
            "--report-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    # Exit 0 also means "nothing was tested" (no operations selected, none generated): it must have
    # reached every operation in the schema and sent requests to them.
    selected, total = map(int, re.search(r"Selected: (\d+)/(\d+)", result.stdout).groups())
    tested = int(re.search(r"Tested: (\d+)", result.stdout).group(1))
    generated = int(re.search(r"(\d+) generated", result.stdout).group(1))
    assert tested == selected == total > 0 and generated >= 10 * total, result.stdout[-3000:]
    assert "repeatedly returned 404" not in result.stdout, result.stdout[-3000:]  # the v2 routes were reached


def test_a_short_fuzz_run_of_decoding_finds_nothing(tmp_path):
    require_or_skip(importlib.util.find_spec("atheris"), "atheris is not installed (pip install atheris)")
    corpus = tmp_path / "corpus"
    shutil.copytree(NASTY, corpus)
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "tests" / "fuzz" / "fuzz_preprocess.py"),
            str(corpus),
            # A single allocation over 1 GiB is a finding (a decompression bomb); the process as a whole
            # may grow, as atheris's coverage bookkeeping does (replaying the corpus in plain Python
            # stays flat at ~40 MiB).
            "-max_total_time=20",
            "-malloc_limit_mb=1024",
            "-rss_limit_mb=8192",
            "-timeout=10",
            f"-artifact_prefix={tmp_path}/",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-6000:]
    # libFuzzer's last line: it ran to its time limit, executing inputs (not, say, exiting 0 at once).
    runs = re.search(r"^Done (\d+) runs in \d+ second", result.stderr, re.M)
    assert runs and int(runs.group(1)) > 100, result.stderr[-3000:]


def test_a_request_head_past_64_kib_gets_431_and_one_within_it_is_served(onnx_server):
    from service.http_head import MAX_HEAD_BYTES

    url = onnx_server.url + "/healthz"
    within = {f"x-pad-{k}": "a" * 1000 for k in range((MAX_HEAD_BYTES - 4096) // 1024)}
    assert httpx.get(url, headers=within, timeout=30).status_code == 200
    r = httpx.get(url, headers={"x-big": "a" * (MAX_HEAD_BYTES + 1)}, timeout=30)
    assert r.status_code == 431, r.text
    assert r.json()["kind"] == "headers_too_large" and r.headers["connection"] == "close"
    host, port = onnx_server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:  # a URL httpx would not send
        sock.sendall(b"GET /healthz?" + b"q" * MAX_HEAD_BYTES + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 431 ")
    many = {f"x-{k}": "" for k in range(MAX_HEAD_BYTES // 6)}  # many small headers count too
    assert httpx.get(url, headers=many, timeout=30).status_code == 431
    with socket.create_connection((host, int(port)), timeout=30) as sock:  # one header value, in pieces
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        answer = b""
        for _ in range(64):  # 4 MiB at most; the parser would copy the value so far on every piece
            try:
                sock.sendall(b"a" * 65536)
            except OSError:  # closed by the server: its answer is waiting
                break
        answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]
    with socket.create_connection((host, int(port)), timeout=30) as sock:  # keep-alive: bound per request
        pad = b"X-Pad: " + b"p" * 40_000 + b"\r\n"
        sock.sendall(b"".join(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + pad + b"\r\n" for _ in range(3)))
        answers = b""
        while answers.count(b"HTTP/1.1 200 ") < 3:
            chunk = sock.recv(65536)
            assert chunk, answers
            answers += chunk
    assert httpx.get(url, timeout=30).status_code == 200  # and the front end serves on
