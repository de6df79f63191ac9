"""The thread policy: explicit settings win, the affinity mask and the load are respected, workers
follow their own allocation. Each case that sets threads runs in a fresh process (PyTorch's thread
count and OpenMP's environment are per process)."""

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from monai_emma import threads
from monai_emma.threads import THREAD_ENV, ThreadPolicy, usable_cpus, worker_env


def _child(code: str, env: dict[str, str] | None = None) -> dict:
    """Run ``code`` in a fresh interpreter (no thread variables unless ``env`` sets them); it
    prints one JSON line."""
    base = {k: v for k, v in os.environ.items() if k not in THREAD_ENV}
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


REPORT = """
    import json, torch
    from monai_emma.threads import apply_thread_policy
    p = apply_thread_policy({arg})
    print(json.dumps({{"threads": p.threads, "torch": torch.get_num_threads(), "source": p.source, "cpus": p.cpus}}))
"""


def test_the_policy_uses_the_free_cpus_of_a_quiet_process():
    r = _child(REPORT.format(arg=""))
    assert r["cpus"] == usable_cpus() and r["torch"] == r["threads"]
    assert 1 <= r["threads"] <= r["cpus"] and r["source"] == "free CPUs"


def test_an_explicit_count_wins_over_the_environment():
    r = _child(REPORT.format(arg="3"), env={"OMP_NUM_THREADS": "1"})
    assert r == {"threads": 3, "torch": 3, "source": "--threads", "cpus": usable_cpus()}


def test_omp_num_threads_in_the_environment_wins_over_the_policy():
    r = _child(REPORT.format(arg=""), env={"OMP_NUM_THREADS": "1"})
    assert (r["threads"], r["torch"], r["source"]) == (1, 1, "OMP_NUM_THREADS=1")


def test_torch_set_num_threads_before_the_policy_wins():
    code = "import torch; torch.set_num_threads(7)\n" + textwrap.dedent(REPORT.format(arg=""))
    r = _child(code)
    assert (r["threads"], r["torch"], r["source"]) == (7, 7, "torch.set_num_threads")


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no affinity masks here")
def test_the_affinity_mask_caps_the_threads():
    code = "import os; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})\n" + textwrap.dedent(
        REPORT.format(arg="")
    )
    r = _child(code)
    assert (r["cpus"], r["threads"], r["torch"]) == (1, 1, 1)


@pytest.mark.skipif(usable_cpus() < 2, reason="needs two CPUs")
def test_a_busy_process_beside_takes_a_thread_away():
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        assert threads.busy_elsewhere() >= 1  # the busy loop is runnable (others may be too)
        r = _child(REPORT.format(arg=""))
        assert r["threads"] < r["cpus"] and r["source"] == "free CPUs"
    finally:
        busy.kill()
        busy.wait()


def test_refresh_follows_the_other_processes_cpu_use(monkeypatch):
    """Synthetic /proc figures: 4 CPUs; others keep 2 cores busy, then none."""
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(threads, "_set_torch_threads", lambda n: None)
    looks = [
        ((0, 0), 0),  # the first look: (busy, total) jiffies of the machine, this process's own
        ((800, 1000), 300),  # 1000 jiffies over 4 CPUs: 800 busy, 300 ours -> others 2 cores
        ((1100, 2000), 550),  # next: 300 busy, 250 ours -> others 0.2 core
    ]
    seen = {}

    def machine():
        seen["look"] = looks.pop(0)
        return seen["look"][0]

    monkeypatch.setattr(threads, "_machine_jiffies", machine)
    monkeypatch.setattr(threads, "_own_jiffies", lambda: seen["look"][1])
    policy = ThreadPolicy(4, 4, "free CPUs")
    assert policy.refresh(now=0.0) == 4
    assert policy.refresh(now=1.5) == 2
    assert policy.refresh(now=1.7) == 2  # within a second of the last look: unchanged, nothing read
    assert policy.refresh(now=3.0) == 4 and not looks
    fixed = ThreadPolicy(3, 4, "OMP_NUM_THREADS=3")
    assert fixed.refresh(now=10.0) == 3 and not fixed.adaptive


def test_workers_get_their_allocation_not_the_drivers_shell():
    env = worker_env(2, {"OMP_NUM_THREADS": "8", "PATH": "/bin"})
    assert all(env[v] == "2" for v in THREAD_ENV) and env["PATH"] == "/bin"


def test_the_cgroup_quota_caps_the_cpus(monkeypatch):
    monkeypatch.setattr(threads, "_cgroup_cpus", lambda: 1.5)
    assert usable_cpus() == min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2)
    monkeypatch.setattr(threads, "_cgroup_cpus", lambda: 0.5)
    assert usable_cpus() == 1


def test_the_cli_applies_threads_and_importing_changes_nothing(tmp_path):
    code = """
        import json, torch
        before = torch.get_num_threads()
        import monai_emma.threads, monai_emma.metrics, monai_emma.engines  # importing sets nothing
        unchanged = torch.get_num_threads() == before
        from monai_emma.cli import main
        from monai_emma.threads import current_policy
        assert current_policy() is None
        rc = main(["fuse", "--threads", "1", "missing-a.png", "missing-b.png", "-o", "TMP/x.png"])
        p = current_policy()
        print(json.dumps({"unchanged": unchanged, "rc": rc, "threads": torch.get_num_threads(), "source": p.source}))
    """
    r = _child(code.replace("TMP", str(tmp_path)))
    assert r == {"unchanged": True, "rc": 2, "threads": 1, "source": "--threads"}


def test_fusion_metrics_follow_the_policy_and_keep_explicit_counts():
    code = """
        import json, numpy as np, torch
        torch.set_num_threads(1)
        from monai_emma.threads import apply_thread_policy
        apply_thread_policy()  # torch.set_num_threads(1) wins
        from monai_emma.metrics import fusion_metrics
        a = np.random.default_rng(0).random((64, 64)) * 255
        fusion_metrics(a, a, a)
        print(json.dumps({"threads": torch.get_num_threads()}))
    """
    assert _child(code) == {"threads": 1}
