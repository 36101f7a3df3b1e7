"""corral's state on disk kept private: the home folder 0700, the SQLite database and its
WAL and shared-memory files 0600; checked, and fixed where corral owns them, at every start.

Called by the Core before the database is opened; a file it cannot fix stops the start
with the command that fixes it.
"""

import os
import stat
from pathlib import Path

from corral.errors import Invalid

HOME_MODE = 0o700
FILE_MODE = 0o600
DATABASE_SIDES = ("", "-wal", "-shm", "-journal")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _tighten(path: Path, mode: int) -> bool:
    """Set the mode when this user owns the path; False when it cannot."""
    if path.stat().st_uid != os.geteuid():
        return False
    os.chmod(path, mode)
    return True


def secure_state(home: Path, database: Path | None) -> list[str]:
    """Make the home folder (and the SQLite database, when there is one) private; return
    what was fixed, one line each. Invalid, naming the fixing command, when another user's
    file is readable by others."""
    fixed: list[str] = []
    if not home.exists():
        home.mkdir(parents=True, mode=HOME_MODE)
    before = _mode(home)
    if before & 0o077:
        if not _tighten(home, HOME_MODE):
            raise Invalid(
                f"corral's home folder {home} is open to other users (mode {before:o}) and is "
                f"not this user's: run `chmod 700 {home}` as its owner"
            )
        fixed.append(f"home folder {home}: mode {before:o} -> 700")
    if database is None:
        return fixed
    database.parent.mkdir(parents=True, exist_ok=True)
    if not database.exists():
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT, FILE_MODE))
    paths = [database.with_name(database.name + side) for side in DATABASE_SIDES]
    for path in paths:
        before = _mode(path) if path.exists() else 0
        if not before & 0o077:
            continue
        if not _tighten(path, FILE_MODE):
            files = " ".join(str(p) for p in paths if p.exists())
            raise Invalid(
                f"the database {path} is readable by other users (mode {before:o}) and is "
                f"not this user's: run `chmod 600 {files}` as its owner"
            )
        fixed.append(f"{path}: mode {before:o} -> 600")
    return fixed
