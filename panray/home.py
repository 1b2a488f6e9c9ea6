"""``PANRAY_HOME`` is private: the directory is 0700 and every secret in it 0600, from birth.

The home holds what lets a process act as the server: the SQLite state file, ``cluster.json``
(where the Ray cluster listens), Ray's token and signing keys. Files are created with their final
mode (``os.open`` with a mode, then an atomic rename), so there is never a moment in which another
user could open them.

Examples:
    >>> import tempfile
    >>> home = private_dir(Path(tempfile.mkdtemp()) / "home")
    >>> oct(home.stat().st_mode & 0o777)
    '0o700'
    >>> oct(write_private(home / "secret", "s3cret").stat().st_mode & 0o777)
    '0o600'
"""

from __future__ import annotations

import os
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) as 0700, or tighten an existing directory we own."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o777 != DIR_MODE and path.stat().st_uid == os.geteuid():
        os.chmod(path, DIR_MODE)
    return path


def create_private(path: Path) -> Path:
    """Make sure ``path`` exists as a 0600 file (empty if new), e.g. before SQLite opens it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    return path


def write_private(path: Path, text: str) -> Path:
    """Replace ``path`` atomically by a 0600 file holding ``text``; readers never see half of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    with os.fdopen(fd, "w") as out:
        os.fchmod(fd, FILE_MODE)  # an old leftover of ours may have had another mode
        out.write(text)
    os.replace(tmp, path)
    return path
