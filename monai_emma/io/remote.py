"""Inputs named by URI (``s3://``, ``gs://``, ``hdfs://``, ``file://``: whatever pyarrow's
filesystems read, with fsspec as their bridge to the rest), copied to a local temporary folder
while MONAI's readers (nibabel, pydicom) use them.

A datalist may name its studies by URI; the URI passes through the datalist, the split record and
Ray Data rows untouched, and only the task that preprocesses a study fetches its files
(:func:`local_copy`): data that no single machine holds are read where they are used.

Example:
    >>> with local_copy("file:///data/case2/mri.nii.gz") as path:  # doctest: +SKIP
    ...     volume = read_volume(path)
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["is_uri", "local_copy", "uri_fingerprint", "RemoteReadError"]

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")


class RemoteReadError(ValueError):
    """A URI could not be read; the message names it and the problem in one line."""


def is_uri(value: object) -> bool:
    """Whether ``value`` is a URI with a scheme (``s3://…``), not a local path."""
    return isinstance(value, str) and bool(_SCHEME.match(value))


def _filesystem(uri: str):
    import pyarrow.fs as pafs

    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as err:  # pyarrow raises ArrowInvalid, OSError... per filesystem
        raise RemoteReadError(f"{uri}: cannot open its filesystem ({type(err).__name__}: {err})") from None


def _info(uri: str):
    import pyarrow.fs as pafs

    fs, path = _filesystem(uri)
    try:
        info = fs.get_file_info(path)
    except Exception as err:
        raise RemoteReadError(f"{uri}: cannot be read ({type(err).__name__}: {err})") from None
    if info.type == pafs.FileType.NotFound:
        raise RemoteReadError(f"{uri}: no such file or folder")
    return fs, path, info


def uri_fingerprint(uri: str) -> list:
    """What identifies a URI's content cheaply (as a local file's path, size and modification
    time): ``[uri, size, mtime_ns]``, or every file's for a folder (a DICOM series)."""
    import pyarrow.fs as pafs

    fs, path, info = _info(uri)
    if info.type == pafs.FileType.Directory:
        files = sorted(fs.get_file_info(pafs.FileSelector(path)), key=lambda f: f.path)
        return [uri, [[f.base_name, f.size, f.mtime_ns] for f in files if f.type == pafs.FileType.File]]
    return [uri, info.size, info.mtime_ns]


@contextmanager
def local_copy(uri: str) -> Iterator[Path]:
    """A local copy of the file or folder (one level: a DICOM series) at ``uri``, removed on exit;
    the copy keeps the name's suffixes (``.nii.gz``) so readers recognise the format.

    Raises:
        RemoteReadError: the URI cannot be opened or read (one line naming it).
    """
    import pyarrow.fs as pafs

    fs, path, info = _info(uri)
    tmp = Path(tempfile.mkdtemp(prefix="emma-remote-"))
    try:
        target = tmp / (info.base_name or "input")
        try:
            if info.type == pafs.FileType.Directory:
                target.mkdir()
                for f in fs.get_file_info(pafs.FileSelector(path)):
                    if f.type == pafs.FileType.File:
                        _copy(fs, f.path, target / f.base_name)
            else:
                _copy(fs, path, target)
        except OSError as err:
            raise RemoteReadError(f"{uri}: cannot be read ({err})") from None
        yield target
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _copy(fs, path: str, target: Path) -> None:
    with fs.open_input_stream(path, compression=None) as src, open(target, "wb") as dst:  # bytes as stored
        shutil.copyfileobj(src, dst, 1 << 20)
