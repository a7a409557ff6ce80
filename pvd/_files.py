"""Helpers for outputs written atomically (made under a temporary name, then renamed into place)."""

from __future__ import annotations

import os


def default_permissions(path: str | os.PathLike) -> None:
    """Give a file or folder made by `tempfile` (mode 0600 / 0700) the mode that open() / mkdir() would give
    it: 0666 / 0777 less the process umask, so that outputs are as readable as any other file the user writes."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~umask)
