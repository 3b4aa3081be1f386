"""How many CPUs this process may use: its affinity mask, narrowed by a cgroup CPU quota.

``taskset`` and ``docker run --cpuset-cpus`` narrow the affinity mask. ``docker run --cpus 4`` and a
Kubernetes CPU limit do not: they set a quota (CFS bandwidth), and the process still sees every CPU
of the node in ``os.sched_getaffinity``. Counting the mask alone, ``--http-workers auto`` on a
64-core node with a 4-CPU limit would start 63 front ends. So the quota counts too, rounded up.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def affinity_cpus() -> int:
    """CPUs in this process's affinity mask (all online CPUs where there is no such call)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def usable_cpus(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> int:
    """The affinity mask's CPUs, or fewer where a cgroup quota allows less time than that."""
    cpus = affinity_cpus()
    quota = cgroup_cpu_quota(cgroup_root, proc_cgroup)
    return cpus if quota is None else max(1, min(cpus, math.ceil(quota)))


def cgroup_cpu_quota(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """CPUs' worth of time per period this process's cgroups allow (the tightest from its own cgroup up
    to the mount's root), or None where none is limited; cgroup v2 (``cpu.max``) and v1 (``cpu.cfs_*``)."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    quotas: list[float] = []
    for line in lines:
        hierarchy, controllers, path = line.split(":", 2)
        if hierarchy == "0" and not controllers:  # v2: one tree mounted at the root
            quotas += _quotas_up_from(cgroup_root, path, _v2_quota)
        elif "cpu" in controllers.split(","):  # v1: the cpu controller's own tree
            mount = cgroup_root / controllers
            quotas += _quotas_up_from(mount if mount.is_dir() else cgroup_root / "cpu", path, _v1_quota)
    return min(quotas) if quotas else None


def _quotas_up_from(mount: Path, path: str, read) -> list[float]:
    """The quota of each cgroup from this process's own (``path`` under ``mount``) up to ``mount``.

    Where ``path`` is not there, the mount is this process's cgroup already (a container without a
    cgroup namespace sees its own cgroup mounted at the root, named by its path on the host)."""
    own = mount / path.lstrip("/")
    directory = own if own.is_dir() else mount
    found = []
    while True:
        quota = read(directory)
        if quota is not None:
            found.append(quota)
        if directory == mount:
            return found
        directory = directory.parent


def _v2_quota(directory: Path) -> float | None:
    try:
        quota, period = (directory / "cpu.max").read_text().split()
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def _v1_quota(directory: Path) -> float | None:
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 or period <= 0 else quota / period
