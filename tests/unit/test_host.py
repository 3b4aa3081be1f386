"""model.host: the CPU's name that every benchmark prints beside its figures."""

from __future__ import annotations

import io
import platform

from model import host


def test_the_cpu_model_comes_from_proc_cpuinfo(monkeypatch):
    cpuinfo = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9654 96-Core Processor\n"
    monkeypatch.setattr(host, "open", lambda path: io.StringIO(cpuinfo), raising=False)
    assert host.cpu_model() == "AMD EPYC 9654 96-Core Processor"


def test_without_proc_cpuinfo_or_its_model_line_platform_names_the_cpu(monkeypatch):
    def missing(path):
        raise FileNotFoundError(path)

    monkeypatch.setattr(platform, "processor", lambda: "")
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(host, "open", missing, raising=False)
    assert host.cpu_model() == "aarch64"
    monkeypatch.setattr(host, "open", lambda path: io.StringIO("processor\t: 0\nBogoMIPS\t: 50.00\n"), raising=False)
    assert host.cpu_model() == "aarch64"
    monkeypatch.setattr(platform, "machine", lambda: "")
    assert host.cpu_model() == "unknown CPU"
