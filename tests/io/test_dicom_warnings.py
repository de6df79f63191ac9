"""pydicom's warnings about a DICOM series (one per file and field) become one note of the volume."""

import logging
import re
import subprocess
import sys
import warnings

import numpy as np
import pydicom
import pytest

from monai_emma.io.dicom import write_derived_series
from monai_emma.io.volumes import PydicomWarnings, list_dicom_series, read_volume

LONG = {"SeriesDescription": "S" * 100, "InstitutionName": "I" * 90, "StationName": "T" * 30}  # LO 64, LO 64, SH 16


@pytest.fixture(scope="module")
def long_fields_series(tmp_path_factory):
    """The small PET phantom as DICOM, every file with three text fields longer than their VR allows."""
    from monai_emma.data.phantom import write_phantom_dicom

    folder = write_phantom_dicom(tmp_path_factory.mktemp("long_fields"), head_mm=48.0, modalities=("pet",))["pet"]
    files = sorted(folder.glob("*.dcm"))
    for path in files:
        ds = pydicom.dcmread(path)
        with warnings.catch_warnings():  # pydicom warns on setting them too
            warnings.simplefilter("ignore")
            for keyword, value in LONG.items():
                setattr(ds, keyword, value)
        ds.save_as(path)
    return folder, files


def _count(note: str) -> int:
    found = re.match(r"pydicom: (\d+) warnings? while reading ", note)
    assert found, note
    return int(found[1])


def test_one_note_instead_of_a_warning_per_file_and_field(long_fields_series, caplog):
    folder, files = long_fields_series
    filters = list(warnings.filters)
    logger_filters = list(logging.getLogger("pydicom").filters)
    with caplog.at_level(logging.WARNING), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vol = read_volume(folder)
    assert [str(w.message) for w in caught if "pydicom" in w.filename] == []
    assert not [r for r in caplog.records if r.name.startswith("pydicom")]
    # the read left the process as it was
    assert warnings.filters == filters and logging.getLogger("pydicom").filters == logger_filters
    pydicom_notes = [n for n in vol.notes if n.startswith("pydicom:")]
    assert len(pydicom_notes) == 1
    note = pydicom_notes[0]
    assert _count(note) >= len(LONG) * len(files)  # one per file and field, at least
    assert f"while reading {folder} about " in note and all(k in note for k in LONG)
    assert "exceeds the maximum length of 64 allowed for VR LO" in note
    assert note.endswith("the values were read as stored")
    # the values are the stored ones, and using the headers later warns no more
    with warnings.catch_warnings(record=True) as later:
        warnings.simplefilter("always")
        assert vol.headers[0].InstitutionName == LONG["InstitutionName"]
        assert str(vol.headers[-1].SeriesDescription) == LONG["SeriesDescription"]
    assert later == []
    # the listing keeps them per series
    (series,) = list_dicom_series(folder).values()
    assert len(series.pydicom_warnings.messages) == len(LONG) * len(files)
    assert set(series.pydicom_warnings.fields) == set(LONG)


def test_no_flood_on_stderr_in_a_fresh_process(long_fields_series):
    """Default warning filters, logging configured to print warnings: at most one line from pydicom."""
    folder, files = long_fields_series
    code = (
        "import logging, sys; logging.basicConfig(level=logging.WARNING)\n"
        "from monai_emma.io.volumes import read_volume\n"
        f"vol = read_volume({str(folder)!r})\n"
        "print('\\n'.join(vol.notes))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    flood = [line for line in proc.stderr.splitlines() if "pydicom" in line or "exceeds the maximum" in line]
    assert len(flood) <= 1, proc.stderr[-2000:]
    (note,) = [line for line in proc.stdout.splitlines() if line.startswith("pydicom:")]
    assert _count(note) >= len(LONG) * len(files)


def test_single_file_and_clean_series(long_fields_series, phantom_volume_files):
    folder, files = long_fields_series
    vol = read_volume(files[0])
    (note,) = vol.notes
    assert _count(note) >= len(LONG) and f"while reading {files[0]} about " in note
    assert read_volume(phantom_volume_files["dicom"]["pet"]).notes == []  # a clean series: no note


def test_collect_keeps_other_warnings_and_restores_state():
    collected = PydicomWarnings()
    filters = list(warnings.filters)
    with pytest.warns(RuntimeWarning, match="not pydicom's"):
        with collected.collect():
            pydicom.misc.warn_and_log("a pydicom complaint")  # warned and logged: counted once
            logging.getLogger("pydicom").warning("logged only")
            warnings.warn("not pydicom's", RuntimeWarning, stacklevel=1)
    assert collected.messages == ["a pydicom complaint", "logged only"]
    assert warnings.filters == filters and logging.getLogger("pydicom").filters == []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with collected.collect(drop_others=True):
            warnings.warn("dropped", RuntimeWarning, stacklevel=1)
    assert caught == [] and len(collected.messages) == 2
    assert PydicomWarnings().note("x") is None
    note = collected.note("/data/series")
    assert note.startswith("pydicom: 2 warnings while reading /data/series (e.g. 'a pydicom complaint'; 2 different")


def test_derived_series_copies_the_headers_quietly(long_fields_series, tmp_path):
    folder, files = long_fields_series
    vol = read_volume(folder)
    fused = np.clip(vol.array / vol.array.max(), 0, 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        write_derived_series(fused, vol, tmp_path / "fused", "test")  # the read's note already says it
    assert caught == []
    vol.notes = []
    with pytest.warns(UserWarning) as record:
        write_derived_series(fused, vol, tmp_path / "fused2", "test")
    assert len(record) == 1
    message = str(record[0].message)
    assert re.match(rf"pydicom: \d+ warnings? while copying the headers of {re.escape(str(folder))}", message)
    assert message.endswith("the values were copied as stored")
    written = pydicom.dcmread(sorted((tmp_path / "fused").glob("*.dcm"))[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert written.InstitutionName == LONG["InstitutionName"]  # copied as stored
