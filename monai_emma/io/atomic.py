"""Write files and folders atomically: to a temporary name beside the target, renamed at the end."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_dir", "OutputSet", "OutputError"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish(tmp: Path, target: Path, directory: bool) -> None:
    """Give the temporary file or folder normal permissions (``mkstemp`` makes them private) and
    move it into place."""
    os.chmod(tmp, (0o777 if directory else 0o666) & ~_umask())
    os.replace(tmp, target)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it to ``target`` on success and
    delete it on failure, so no half-written file is ever left under the final name.

    Raises:
        FileExistsError: ``target`` exists and ``overwrite`` is false.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target}: output exists (use --overwrite to replace it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(target.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _publish(tmp_path, target, directory=False)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it replaces ``target`` (a previous
    folder is removed only after the new one is complete), on failure it is deleted.

    Raises:
        FileExistsError: ``target`` exists and ``overwrite`` is false.
    """
    import shutil

    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target}: output exists (use --overwrite to replace it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
            os.replace(target, old / "previous")
        _publish(tmp, target, directory=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class OutputError(ValueError):
    """An output that cannot be written; the message names the user's path."""


class OutputSet:
    """All outputs of one command, written all-or-nothing.

    :meth:`reserve` runs before any input is read: every target must not be a folder where a
    file goes (or a file where a folder goes), must not exist unless ``overwrite``, and its folder
    must exist or be made; a temporary file (or folder) is then created beside each target, which
    proves it can be written as this process. The command writes into :meth:`path` of each target;
    :meth:`commit` moves them all into place at the end. Any failure (or :meth:`rollback`, or
    leaving the ``with`` block by an exception, Ctrl-C included) removes every temporary and every
    folder that :meth:`reserve` made, so nothing is left behind.

    Args:
        overwrite: replace existing outputs.

    Example:
        >>> outs = OutputSet()  # doctest: +SKIP
        >>> outs.add("fused.nii.gz", "-o"); outs.add("report.json", "--report")  # doctest: +SKIP
        >>> with outs.reserve():  # doctest: +SKIP
        ...     write_nifti(outs.path("fused.nii.gz")); write_json(outs.path("report.json"))
        ...     outs.commit()
    """

    def __init__(self, overwrite: bool = False) -> None:
        self.overwrite = overwrite
        self._targets: dict[Path, tuple[str, bool]] = {}
        self._staged: dict[Path, Path] = {}
        self._made: list[Path] = []
        self._published: list[Path] = []

    def add(self, target: str | os.PathLike, flag: str, directory: bool = False) -> Path:
        """Declare an output (``flag``: the option that named it, for messages).

        Raises:
            OutputError: the same path given for two outputs.
        """
        path = Path(target)
        key = Path(os.path.abspath(path))
        for other, (other_flag, _) in self._targets.items():
            if Path(os.path.abspath(other)) == key:
                raise OutputError(f"{path}: given for both {other_flag} and {flag}")
        self._targets[path] = (flag, directory)
        return path

    @property
    def targets(self) -> list[Path]:
        return list(self._targets)

    def check(self) -> None:
        """The checks of :meth:`reserve` that need no writing (what exists, what is a folder)."""
        for path, (flag, directory) in self._targets.items():
            if path.is_dir() and not directory:
                raise OutputError(f"{path}: is a folder; {flag} needs a file name")
            if path.exists() and directory and not path.is_dir():
                raise OutputError(f"{path}: is a file; {flag} needs a folder")
            if path.exists() and not self.overwrite:
                raise OutputError(f"{path}: output exists (use --overwrite to replace it)")
            ancestor = path.parent
            while not ancestor.exists() and ancestor != ancestor.parent:
                ancestor = ancestor.parent
            if not ancestor.is_dir():
                raise OutputError(f"{path}: cannot make its folder: {ancestor} is a file")

    @contextlib.contextmanager
    def reserve(self) -> Iterator[OutputSet]:
        """Check every target and create its temporary (see the class docstring); the block
        that writes them runs inside. Leaving it by an exception rolls everything back.

        Raises:
            OutputError: a target that cannot be written, naming it and why.
        """
        self.check()
        try:
            for path, (_, directory) in self._targets.items():
                self._stage(path, directory)
            yield self
        except BaseException:
            self.rollback()
            raise

    def _stage(self, path: Path, directory: bool) -> None:
        missing = []
        folder = path.parent
        while not folder.exists():
            missing.append(folder)
            folder = folder.parent
        try:
            for d in reversed(missing):
                d.mkdir()
                self._made.append(d)
            if directory:
                tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
            else:
                fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix="".join(path.suffixes), dir=path.parent)
                os.close(fd)
                tmp = Path(name)
        except OSError as err:
            raise OutputError(f"{path}: cannot be written: {err.strerror or err}") from None
        self._staged[path] = tmp

    def path(self, target: str | os.PathLike) -> Path:
        """Where to write ``target`` now (its temporary)."""
        return self._staged[Path(target)]

    def target_of(self, written: str | os.PathLike) -> Path | None:
        """The user's target behind a temporary name (or a file written beside it), if any."""
        p = Path(written)
        for target, tmp in self._staged.items():
            if p == tmp or (p.parent == tmp.parent and p.name.startswith(f".{target.name}.")):
                return target
            if tmp in p.parents:
                return target
        return None

    def describe(self, err: OSError, default: Path | None = None) -> str:
        """An ``OSError`` while writing, in one line naming the user's path (the target behind the
        temporary in the error, else ``default``), never a temporary's name."""
        target = self.target_of(err.filename) if err.filename else None
        where = target or default or (next(iter(self._targets)) if len(self._targets) == 1 else None)
        reason = err.strerror or str(err)
        return f"{where}: cannot be written: {reason}" if where else f"an output cannot be written: {reason}"

    def commit(self, written: set[Path] | None = None) -> list[Path]:
        """Move every temporary into place (those of ``written`` targets when given; the others'
        temporaries are removed). Returns the targets in place.

        Raises:
            OSError: a move failed; the targets already moved are removed again when they did not
                exist before (an overwritten file cannot come back).
        """
        import shutil

        keep = set(self._targets) if written is None else {Path(p) for p in written}
        existed = {p for p in keep if p.exists()}
        try:
            for target, tmp in list(self._staged.items()):
                if target not in keep:
                    _remove(tmp)
                    continue
                directory = self._targets[target][1]
                if directory and target.exists():
                    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
                    os.replace(target, old / "previous")
                    _publish(tmp, target, directory=True)
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    _publish(tmp, target, directory=directory)
                self._published.append(target)
                del self._staged[target]
        except BaseException:
            for target in self._published:
                if target not in existed:
                    _remove(target)
            self.rollback()
            raise
        self._staged.clear()
        return list(self._published)

    def rollback(self) -> None:
        """Remove every temporary, and the folders :meth:`reserve` made (when empty)."""
        for tmp in self._staged.values():
            _remove(tmp)
        self._staged.clear()
        for d in reversed(self._made):
            try:
                d.rmdir()
            except OSError:
                pass
        self._made.clear()


def _remove(path: Path) -> None:
    import shutil

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
