"""``monai-emma fuse``: every output is checked before an input is read, and all of them are
written, or none (unwritable places, a full disk, a kill in the middle)."""

import contextlib
import errno
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from monai_emma.cli import main


@contextlib.contextmanager
def mounted_tmpfs(folder, *options):
    """A small tmpfs at ``folder`` (root only); skips the test where mounting is not allowed."""
    folder.mkdir(parents=True, exist_ok=True)
    opts = ",".join(("size=64k", *options))
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(folder)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _everything(folder):
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


def _broken_pet(tmp_path):
    """A PET that is not a NIfTI at all: an error about it means the inputs were read."""
    broken = tmp_path / "pet.nii.gz"
    broken.write_bytes(b"not a nifti")
    return broken


def test_html_under_a_file_is_refused_before_reading(phantom_volume_files, weights, tmp_path, capsys):
    mri = phantom_volume_files["nifti"]["mri"]
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "out"
    argv = ["fuse", str(mri), str(_broken_pet(tmp_path)), "-o", str(out / "f.nii.gz"), "--report", str(out / "r.json")]
    argv += ["--html", str(tmp_path / "afile" / "v.html"), "--weights", str(weights)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'afile' / 'v.html'}: cannot make its folder" in err and err.count("\n") == 1
    assert "pet.nii.gz" not in err and not out.exists()


def test_html_on_a_read_only_disk_beside_a_writable_output(phantom_volume_files, weights, tmp_path, capsys):
    """Root writes anywhere on a normal disk, so the unwritable place is a read-only mount."""
    mri = phantom_volume_files["nifti"]["mri"]
    out = tmp_path / "out"
    with mounted_tmpfs(tmp_path / "ro", "ro") as ro:
        html = ro / "v.html"
        argv = ["fuse", str(mri), str(_broken_pet(tmp_path)), "-o", str(out / "f.nii.gz"), "--html", str(html)]
        assert main([*argv, "--report", str(out / "r.json"), "--weights", str(weights), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert f"{html}: cannot be written: Read-only file system" in err and err.count("\n") == 1
        assert "pet.nii.gz" not in err  # refused before the (broken) input was read
        assert not out.exists() and _everything(ro) == []


def test_a_full_disk_leaves_nothing(phantom_volume_files, weights, tmp_path, capsys, monkeypatch):
    """The viewer page (hundreds of kB) does not fit a 64 kB disk: the fusion ran, yet neither
    the NIfTI nor the report beside it is left, nor any temporary."""
    files = phantom_volume_files["nifti"]
    out = tmp_path / "out"
    argv = ["fuse", str(files["mri"]), str(files["pet"]), "-o", str(out / "f.nii.gz"), "--report", str(out / "r.json")]
    argv += ["--weights", str(weights), "--quiet", "--precision", "fp32"]
    try:
        full = mounted_tmpfs(tmp_path / "small")
        small = full.__enter__()
    except pytest.skip.Exception:  # no mount here: the same failure injected into the page's write
        full, small = None, tmp_path / "small"
        small.mkdir(exist_ok=True)
        real = type(small).write_text

        def no_space(self, *a, **k):
            if self.name.startswith(".v.html."):
                raise OSError(errno.ENOSPC, "No space left on device", str(self))
            return real(self, *a, **k)

        monkeypatch.setattr(type(small), "write_text", no_space)
    try:
        assert main([*argv, "--html", str(small / "v.html")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1] == f"monai-emma: error: {small / 'v.html'}: cannot be written: No space left on device"
        assert not out.exists() and _everything(small) == []
    finally:
        if full is not None:
            full.__exit__(None, None, None)


@pytest.fixture(scope="module")
def head_100mm(tmp_path_factory):
    """A 100 mm head at 1 mm: its fidelity report takes seconds, time enough to be killed in."""
    from monai_emma.data.phantom import write_phantom_nifti

    return write_phantom_nifti(tmp_path_factory.mktemp("head100"), head_mm=100.0)


def _read_stderr(proc, sink: list[bytes]) -> None:
    while chunk := os.read(proc.stderr.fileno(), 4096):
        sink.append(chunk)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_kill_in_the_middle_leaves_no_output(head_100mm, weights, tmp_path, sig):
    """Killed while the fidelity report runs (after the fusion): SIGTERM removes every temporary
    and the folders it made; even SIGKILL leaves no output under its final name."""
    files = head_100mm
    out = tmp_path / "out"
    targets = [out / "f.nii.gz", out / "r.json", out / "v.html", out / "f_colour.nii.gz"]
    cmd = [sys.executable, "-m", "monai_emma", "fuse", str(files["mri"]), str(files["pet"]), "-o", str(targets[0])]
    cmd += ["--report", str(targets[1]), "--html", str(targets[2]), "--colormap", "hot", "--weights", str(weights)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env)
    sink: list[bytes] = []
    reader = threading.Thread(target=_read_stderr, args=(proc, sink), daemon=True)
    reader.start()
    deadline = time.monotonic() + 240
    while b"report:" not in b"".join(sink) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, b"".join(sink).decode()[-2000:]  # still at work: the report is slow enough
    proc.send_signal(sig)
    proc.wait(timeout=60)
    reader.join(timeout=10)
    assert not any(t.exists() for t in targets)
    if sig == signal.SIGTERM:
        assert proc.returncode == 143 and b"monai-emma: terminated" in b"".join(sink)
        assert not out.exists()  # the folder it made is gone too
