"""Outputs written atomically: made under a temporary name in the destination's folder, renamed into place on
success, removed on failure, so a reader never sees a partial file or folder.

    with atomic_file(path) as temporary:           # temporary: a Path to write (it does not exist yet)
        write_something(temporary)
    with atomic_dir(path, overwrite=False) as temporary:   # temporary: an empty folder to fill
        ...

Both give the result the permissions open() / mkdir() would (not tempfile's 0600 / 0700).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class OutputExistsError(ValueError):
    """The destination exists and replacing it was not allowed."""


def default_permissions(path: str | os.PathLike) -> None:
    """Give a file or folder made by `tempfile` (mode 0600 / 0700) the mode that open() / mkdir() would give
    it: 0666 / 0777 less the process umask, so that outputs are as readable as any other file the user writes."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~umask)


# Temporaries carry the writing process's id: `.{name}.pvd-{pid}-tmp...`. One left behind by a killed process
# (SIGKILL, power loss) is removed by the next write of the same output, once that process is gone.
_TEMPORARY_MARK = ".pvd-"


def _temporary_prefix(path: Path, kind: str) -> str:
    return f".{path.name}{_TEMPORARY_MARK}{os.getpid()}-{kind}"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of `path` that processes no longer running left in its folder; returns them."""
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    prefix = f".{path.name}{_TEMPORARY_MARK}"
    for candidate in path.parent.glob(f"{glob.escape(prefix)}*"):
        pid_text = candidate.name[len(prefix):].split("-", 1)[0]
        if pid_text.isdigit() and int(pid_text) != os.getpid() and not _process_alive(int(pid_text)):
            _remove(candidate)
            removed.append(candidate)
    return removed


def natural_key(name: str) -> list:
    """Sort key that orders digit runs by value: 'f2.png' < 'f10.png' (case-insensitive otherwise)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def visible(path: Path) -> bool:
    """Whether a data file counts: hidden files, Synology '@eaDir' folders and Windows thumbnails do not."""
    return not path.name.startswith((".", "@")) and path.name != "Thumbs.db"


def make_folder(folder: str | os.PathLike) -> Path:
    """mkdir -p `folder`, with a one-line error naming the culprit when a file stands where a folder must be."""
    folder = Path(folder)
    for ancestor in [folder, *folder.parents]:
        if ancestor.exists() or ancestor.is_symlink():
            if not ancestor.is_dir():
                where = "" if ancestor == folder else f": cannot create {folder}"
                raise NotADirectoryError(f"{ancestor} is a file, not a folder{where} (choose another output)")
            break
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def missing_file(path: str | os.PathLike, what: str) -> str | None:
    """None when `path` is an existing file, else the one-line reason it cannot be read as `what`."""
    path = Path(path)
    if path.is_file():
        return None
    if path.is_dir():
        return f"{path} is a folder, not a {what}"
    return f"{path}: no such {what}"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_file(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to `path` for the caller to write; rename it to `path` on success.

    The parent folder is created. On an exception the temporary is removed
    and `path` is left as it was. overwrite=False: OutputExistsError if `path` exists (checked before and
    after writing).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists (pass overwrite=True / --overwrite to replace it)")
    make_folder(path.parent)
    remove_stale_temporaries(path)
    handle, name = tempfile.mkstemp(prefix=_temporary_prefix(path, "tmp"), suffix=path.suffix, dir=path.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        default_permissions(temporary)
        if path.exists() and not overwrite:
            raise OutputExistsError(f"{path} already exists (pass overwrite=True / --overwrite to replace it)")
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder next to `path` for the caller to fill; rename it to `path` on success.

    An existing `path` is replaced only with overwrite=True (else OutputExistsError, checked before and after
    filling); it is moved aside first and deleted once the new folder is in place. On an exception the
    temporary folder is removed and `path` is left as it was.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists (pass overwrite=True / --overwrite to replace it)")
    make_folder(path.parent)
    remove_stale_temporaries(path)
    temporary = Path(tempfile.mkdtemp(prefix=_temporary_prefix(path, "tmp"), dir=path.parent))
    default_permissions(temporary)
    try:
        yield temporary
        replace_into(temporary, path, overwrite)
    except BaseException:
        _remove(temporary)
        raise


def replace_into(temporary: str | os.PathLike, path: str | os.PathLike, overwrite: bool) -> None:
    """Rename the finished `temporary` (file or folder) to `path`. An existing `path` is replaced only when
    `overwrite` (else OutputExistsError): moved aside, then deleted once `temporary` took its place."""
    temporary, path = Path(temporary), Path(path)
    if not path.exists() and not path.is_symlink():
        os.replace(temporary, path)
        return
    if not overwrite:
        raise OutputExistsError(f"{path} already exists (pass overwrite=True / --overwrite to replace it)")
    retired = Path(tempfile.mkdtemp(prefix=_temporary_prefix(path, "old"), dir=path.parent))
    os.replace(path, retired / path.name)
    os.replace(temporary, path)
    shutil.rmtree(retired, ignore_errors=True)
