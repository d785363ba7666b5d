"""Errors that end a command with one message and no traceback: `UserError` means "the user asked
for something we cannot do" (exit code 2); `StorageError` means the filesystem refused a write
(full disk or quota, read-only mount, permissions; exit code 1, or 2 through `UnwritableError`
when found before any work). `storage_error` turns such an OSError into a StorageError."""

from __future__ import annotations

import errno
from pathlib import Path

# the errno values of a filesystem that refuses writes: the cause is outside flowarena, and the
# same command resumes once it is gone
STORAGE_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


class UserError(Exception):
    """Bad input: the message says what was wrong and what to do instead."""


class DataError(UserError):
    """A dataset that is missing, unreadable or malformed."""


class StorageError(Exception):
    """A write the filesystem refused (`STORAGE_ERRNOS`); the message names the path and the cause."""

    def __init__(self, path: str | Path, cause: OSError) -> None:
        self.path, self.errno = Path(path), cause.errno
        reason = STORAGE_ERRNOS.get(cause.errno or 0) or cause.strerror or str(cause)
        name = errno.errorcode.get(cause.errno or 0, "")
        super().__init__(f"cannot write {self.path}: {reason}" + (f" ({name})" if name else ""))


class UnwritableError(UserError):
    """A results directory that refuses writes before any work started (exit code 2)."""


def is_storage_fault(error: BaseException) -> bool:
    """An OSError of a filesystem that refuses writes (`STORAGE_ERRNOS`)."""
    return isinstance(error, OSError) and error.errno in STORAGE_ERRNOS
