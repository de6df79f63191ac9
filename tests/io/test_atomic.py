"""OutputSet: a command's outputs checked first, then published together or not at all."""

import contextlib

import pytest

from monai_emma.io.atomic import OutputError, OutputSet


def test_all_outputs_appear_together(tmp_path):
    outs = OutputSet()
    a, b, d = tmp_path / "new" / "deep" / "a.nii.gz", tmp_path / "b.json", tmp_path / "series"
    outs.add(a, "-o")
    outs.add(b, "--report")
    outs.add(d, "--dicom", directory=True)
    with outs.reserve():
        assert not a.exists() and not b.exists() and not d.exists()  # only temporaries so far
        outs.path(a).write_bytes(b"a")
        outs.path(b).write_text("{}")
        (outs.path(d) / "1.dcm").write_bytes(b"d")
        assert outs.path(a).name.startswith(".a.nii.gz.") and outs.path(a).name.endswith(".nii.gz")
        assert sorted(outs.commit()) == sorted([a, b, d])
    assert a.read_bytes() == b"a" and b.read_text() == "{}" and (d / "1.dcm").read_bytes() == b"d"
    assert [p.name for p in tmp_path.rglob(".*")] == []


def test_a_failure_removes_every_temporary_and_made_folder(tmp_path):
    outs = OutputSet()
    a, b = tmp_path / "x" / "y" / "a.png", tmp_path / "b.json"
    outs.add(a, "-o")
    outs.add(b, "--report")
    with pytest.raises(RuntimeError), outs.reserve():
        outs.path(a).write_bytes(b"a")
        raise RuntimeError("the fusion failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_unwritten_targets_are_not_published(tmp_path):
    outs = OutputSet()
    a, colour = tmp_path / "a.png", tmp_path / "a_colour.png"
    outs.add(a, "-o")
    outs.add(colour, "--colormap")
    with outs.reserve():
        outs.path(a).write_bytes(b"a")
        outs.commit({a})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


@pytest.mark.parametrize(
    "case,expect",
    [
        ("exists", "output exists (use --overwrite"),
        ("folder", "is a folder; -o needs a file name"),
        ("under_a_file", "cannot make its folder"),
        ("twice", "given for both -o and --report"),
    ],
)
def test_checks_name_the_users_path(tmp_path, case, expect):
    outs = OutputSet()
    target = tmp_path / "out.nii.gz"
    if case == "exists":
        target.write_text("old")
    elif case == "folder":
        target.mkdir()
    elif case == "under_a_file":
        (tmp_path / "f").write_text("x")
        target = tmp_path / "f" / "out.nii.gz"
    outs.add(target, "-o")
    with pytest.raises(OutputError, match="given for both") if case == "twice" else contextlib.nullcontext():
        outs.add(tmp_path / "." / "out.nii.gz" if case == "twice" else tmp_path / "other.json", "--report")
    if case == "twice":
        return
    with pytest.raises(OutputError) as info:
        outs.check()
    assert str(info.value).startswith(str(target)) and expect in str(info.value)


def test_overwrite_replaces_files_and_folders(tmp_path):
    old_file, old_dir = tmp_path / "a.json", tmp_path / "series"
    old_file.write_text("old")
    old_dir.mkdir()
    (old_dir / "old.dcm").write_text("old")
    outs = OutputSet(overwrite=True)
    outs.add(old_file, "--report")
    outs.add(old_dir, "-o", directory=True)
    with outs.reserve():
        outs.path(old_file).write_text("new")
        (outs.path(old_dir) / "new.dcm").write_text("new")
        outs.commit()
    assert old_file.read_text() == "new" and sorted(p.name for p in old_dir.iterdir()) == ["new.dcm"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "series"]
