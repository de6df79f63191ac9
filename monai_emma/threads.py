"""How many CPU threads this process computes with: one policy for every command, engine and worker.

PyTorch's CPU kernels split each operation over an OpenMP team that, by default, spans every core
of the machine. On a machine that other work shares (training beside evaluation, several Ray or
serving workers on one node, CI runners), each operation then waits for the team's slowest
thread, and a thread the scheduler has taken off its core stalls all the others: a U-Fuser
forward that takes 90 ms on a quiet 2-core machine took up to 5 s beside two busy processes.
The policy (measured in ``benchmarks/bench_busy.py``, figures in docs/performance.md):

* **threads = the CPUs free for this process**: the CPUs it may run on (affinity mask and cgroup
  quota: :func:`usable_cpus`) less the cores other processes keep busy (:func:`busy_elsewhere`),
  at least one. On a quiet machine that is every usable CPU, as before; beside one CPU-bound
  process on 2 cores, one thread, which the scheduler never has to take away.
* **re-decided while the process runs**: long work (training iterations, fusion batches, serving
  requests) calls :meth:`ThreadPolicy.refresh` between units of work; at most once a second it
  measures the other processes' CPU use since the last look (``/proc/stat`` less this process's
  own ``/proc/self/stat``) and follows it.
* **small 2D work follows the same count** (one pair's metrics call :func:`refresh_threads`):
  split over the free cores only, never over a core another process holds.
* **explicit settings win in their process**: a ``threads`` argument (``--threads``,
  ``--threads-per-worker``), ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` in the environment, or a
  ``torch.set_num_threads`` made before the policy applies; the policy then sets that count and
  never changes it. Worker processes (Ray Train, serving) get their count from their own CPU
  allocation (:func:`worker_env`), not from the driver's shell.

Importing this module changes nothing; :func:`apply_thread_policy` is called where a command, an
engine or a worker starts.

Example:
    >>> policy = apply_thread_policy()  # doctest: +SKIP
    >>> policy.describe()  # doctest: +SKIP
    '2 threads of 2 usable CPUs (free CPUs)'
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "THREAD_ENV",
    "ThreadPolicy",
    "usable_cpus",
    "busy_elsewhere",
    "explicit_threads",
    "apply_thread_policy",
    "current_policy",
    "refresh_threads",
    "worker_env",
]

#: the variables that fix a process's thread count (OpenMP, MKL, OpenBLAS, numexpr)
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")
#: seconds between two looks at the machine's load in :meth:`ThreadPolicy.refresh`
REFRESH_SECONDS = 1.0


def _cgroup_cpus() -> float | None:
    """The CPU quota of this process's cgroup in CPUs (v2 ``cpu.max``, v1 ``cfs_quota_us``), or None."""
    try:
        v2 = Path("/sys/fs/cgroup/cpu.max")
        if v2.is_file():
            quota, period = v2.read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        v1 = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
        if v1.is_file():
            quota = int(v1.read_text())
            period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
            return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None
    return None


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask, capped by its cgroup's CPU quota
    (rounded up: a quota of 1.5 CPUs still runs two threads part-time), at least one."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpus()
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def _machine_jiffies() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs since boot, from ``/proc/stat`` (None elsewhere)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


def _own_jiffies() -> int | None:
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime (all threads)
    except (OSError, ValueError, IndexError):
        return None


def _running_elsewhere() -> int | None:
    """Runnable tasks on the machine now other than this thread (``procs_running`` less one)."""
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("procs_running"):
                    return max(0, int(line.split()[1]) - 1)
    except (OSError, ValueError):
        return None
    return None


def busy_elsewhere(samples: int = 3, gap: float = 0.002) -> int:
    """Cores other processes keep busy right now: the fewest runnable tasks besides this thread
    over ``samples`` looks ``gap`` seconds apart (a task that only blinks is not counted); 0 where
    the kernel does not say (not Linux)."""
    counts = []
    for i in range(samples):
        n = _running_elsewhere()
        if n is None:
            return 0
        counts.append(n)
        if i + 1 < samples:
            time.sleep(gap)
    return min(counts)


def _torch_default_threads() -> int:
    """The intra-op thread count PyTorch starts with: ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS``,
    else the machine's physical cores (what ``at::intraop_default_num_threads`` picks)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        value = _positive(os.environ.get(var))
        if value:
            return value
    cores = set()
    for cpu in Path("/sys/devices/system/cpu").glob("cpu[0-9]*"):
        try:
            cores.add(((cpu / "topology/physical_package_id").read_text(), (cpu / "topology/core_id").read_text()))
        except OSError:
            continue
    return len(cores) or os.cpu_count() or 1


def _positive(value: str | None) -> int | None:
    try:
        n = int(str(value).strip())
    except (TypeError, ValueError):
        return None
    return n if n >= 1 else None


def explicit_threads() -> tuple[int, str] | None:
    """A thread count this process was given outside the policy, and where: ``OMP_NUM_THREADS`` (or
    ``MKL_NUM_THREADS``) in the environment, or a ``torch.set_num_threads`` already made (PyTorch
    imported and running another count than it started with, which the policy did not set)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        value = _positive(os.environ.get(var))
        if value:
            return value, f"{var}={value}"
    torch = sys.modules.get("torch")
    if torch is not None:
        now = torch.get_num_threads()
        if now != _torch_default_threads() and now != _STATE.get("set"):
            return now, "torch.set_num_threads"
    return None


_STATE: dict = {}  # what the policy last set ("set") and the process's policy ("policy")


@dataclass
class ThreadPolicy:
    """The threads of this process and why.

    Attributes:
        threads: PyTorch intra-op threads now.
        cpus: CPUs this process may use (:func:`usable_cpus`).
        source: ``"free CPUs"`` (the policy decides, and re-decides in :meth:`refresh`) or the
            explicit setting that fixed it (``"--threads"``, ``"OMP_NUM_THREADS=2"``,
            ``"torch.set_num_threads"``, ``"worker allocation"``).
    """

    threads: int
    cpus: int
    source: str
    _last: tuple[float, tuple[int, int] | None, int | None] | None = field(default=None, repr=False)

    @property
    def adaptive(self) -> bool:
        return self.source == "free CPUs"

    def describe(self) -> str:
        s = "" if self.threads == 1 else "s"
        return f"{self.threads} thread{s} of {self.cpus} usable CPU{'' if self.cpus == 1 else 's'} ({self.source})"

    def refresh(self, now: float | None = None) -> int:
        """Follow the machine's load (an adaptive policy only, at most once per
        :data:`REFRESH_SECONDS`): other processes' CPU use since the last look, in cores, taken
        from the usable CPUs. Returns the thread count in force."""
        if not self.adaptive:
            return self.threads
        now = time.monotonic() if now is None else now
        if self._last is not None and now - self._last[0] < REFRESH_SECONDS:
            return self.threads  # nothing read within the second
        machine, own = _machine_jiffies(), _own_jiffies()
        last, self._last = self._last, (now, machine, own)
        if last is None or None in (machine, own, last[1], last[2]):
            return self.threads
        _, (busy0, total0), own0 = last
        total = machine[1] - total0
        if total <= 0:
            return self.threads
        ncpu = os.cpu_count() or 1
        others = max(0.0, (machine[0] - busy0) - (own - own0)) / total * ncpu  # cores, over the interval
        threads = max(1, min(self.cpus, self.cpus - math.floor(others + 0.25)))
        if threads != self.threads:
            _set_torch_threads(threads)
            self.threads = threads
        return self.threads


def _set_torch_threads(n: int) -> None:
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    _STATE["set"] = n


def apply_thread_policy(threads: int | None = None, source: str = "--threads") -> ThreadPolicy:
    """Decide this process's threads and set them in PyTorch (which sets MKL's too).

    Args:
        threads: an explicit count (a ``--threads`` flag, a worker's CPU allocation); it wins over
            the environment and the policy.
        source: what ``threads`` came from, for :meth:`ThreadPolicy.describe`.

    Returns:
        The process's :class:`ThreadPolicy` (also :func:`current_policy`).
    """
    cpus = usable_cpus()
    if threads is not None:
        if int(threads) < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        policy = ThreadPolicy(int(threads), cpus, source)
    else:
        given = explicit_threads()
        if given is not None:
            policy = ThreadPolicy(given[0], cpus, given[1])
        else:
            policy = ThreadPolicy(max(1, cpus - busy_elsewhere()), cpus, "free CPUs")
            policy.refresh()  # the first look: later refreshes measure from here
    _set_torch_threads(policy.threads)
    _STATE["policy"] = policy
    return policy


def current_policy() -> ThreadPolicy | None:
    """The policy :func:`apply_thread_policy` last applied in this process, or None."""
    return _STATE.get("policy")


def refresh_threads() -> None:
    """:meth:`ThreadPolicy.refresh` of this process's policy, if one was applied (a cheap no-op
    otherwise): call it between units of work."""
    policy = _STATE.get("policy")
    if policy is not None and policy.adaptive:
        policy.refresh()


def worker_env(threads: int, env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) with every :data:`THREAD_ENV` variable set to ``threads``:
    the environment of a worker process whose CPU allocation is ``threads``, whatever the driver's
    shell exported."""
    out = dict(os.environ if env is None else env)
    out.update({var: str(int(threads)) for var in THREAD_ENV})
    return out
