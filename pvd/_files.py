"""Outputs written atomically: made under a temporary name in the destination's folder, renamed into place on
success, removed on failure, so a reader never sees a partial file or folder.

    with atomic_file(path) as temporary:           # temporary: a Path to write (it does not exist yet)
        write_something(temporary)
    with atomic_dir(path, overwrite=False) as temporary:   # temporary: an empty folder to fill
        ...

Both give the result the permissions open() / mkdir() would (not tempfile's 0600 / 0700).
"""

from __future__ import annotations

import os
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
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
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
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
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
    retired = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
    os.replace(path, retired / path.name)
    os.replace(temporary, path)
    shutil.rmtree(retired, ignore_errors=True)
