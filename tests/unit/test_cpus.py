"""service.cpus: the affinity mask narrowed by a cgroup CPU quota, on cgroup trees the tests make."""

from __future__ import annotations

import pytest

from service import cpus


def cgroup_v2(tmp_path, own: str, limits: dict[str, str]):
    """A v2 tree under tmp_path/cg, this process in ``own``, ``cpu.max`` text per cgroup path."""
    root = tmp_path / "cg"
    (root / own.lstrip("/")).mkdir(parents=True, exist_ok=True)
    for path, text in limits.items():
        directory = root / path.lstrip("/")
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "cpu.max").write_text(text + "\n")
    proc = tmp_path / "cgroup"
    proc.write_text(f"0::{own}\n")
    return root, proc


def cgroup_v1(tmp_path, mount_name: str, own: str, quota: int, period: int = 100000, at: str | None = None):
    root = tmp_path / "cg"
    directory = root / mount_name / (at if at is not None else own).lstrip("/")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (directory / "cpu.cfs_period_us").write_text(f"{period}\n")
    proc = tmp_path / "cgroup"
    proc.write_text(f"4:memory:{own}\n2:{mount_name}:{own}\n0::/\n")
    return root, proc


def test_v2_quota_is_cpus_worth_of_time(tmp_path):
    root, proc = cgroup_v2(tmp_path, "/", {"/": "250000 100000"})
    assert cpus.cgroup_cpu_quota(root, proc) == 2.5


def test_v2_no_limit_is_none(tmp_path):
    root, proc = cgroup_v2(tmp_path, "/kubepods/pod1", {"/kubepods/pod1": "max 100000", "/": "max 100000"})
    assert cpus.cgroup_cpu_quota(root, proc) is None


def test_v2_the_tightest_cgroup_on_the_way_up_counts(tmp_path):
    root, proc = cgroup_v2(
        tmp_path, "/kubepods/pod1/c1", {"/kubepods/pod1/c1": "800000 100000", "/kubepods/pod1": "300000 100000"}
    )
    assert cpus.cgroup_cpu_quota(root, proc) == 3.0


def test_v1_quota_with_a_combined_mount(tmp_path):
    root, proc = cgroup_v1(tmp_path, "cpu,cpuacct", "/docker/abc", 150000)
    assert cpus.cgroup_cpu_quota(root, proc) == 1.5


def test_v1_container_sees_its_own_cgroup_at_the_mount_root(tmp_path):
    root, proc = cgroup_v1(tmp_path, "cpu", "/docker/abc", 400000, at="/")
    assert cpus.cgroup_cpu_quota(root, proc) == 4.0


def test_v1_unlimited_is_none(tmp_path):
    root, proc = cgroup_v1(tmp_path, "cpu", "/", -1)
    assert cpus.cgroup_cpu_quota(root, proc) is None


def test_no_cgroup_file_is_no_limit(tmp_path):
    assert cpus.cgroup_cpu_quota(tmp_path, tmp_path / "missing") is None


@pytest.mark.parametrize(("limit", "affinity", "expected"), [("150000 100000", 8, 2), ("800000 100000", 4, 4)])
def test_usable_cpus_is_the_smaller_rounded_up(tmp_path, monkeypatch, limit, affinity, expected):
    monkeypatch.setattr(cpus, "affinity_cpus", lambda: affinity)
    root, proc = cgroup_v2(tmp_path, "/", {"/": limit})
    assert cpus.usable_cpus(root, proc) == expected


def test_a_small_quota_still_leaves_one_cpu(tmp_path, monkeypatch):
    monkeypatch.setattr(cpus, "affinity_cpus", lambda: 8)
    root, proc = cgroup_v2(tmp_path, "/", {"/": "10000 100000"})
    assert cpus.usable_cpus(root, proc) == 1
