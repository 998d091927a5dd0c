"""Files that may hold a secret, written whole and readable by their owner only.

The file is created under a temporary name *with its final mode* (never
chmod-ed afterwards, so no byte is ever readable by others), flushed, then
renamed over the target: a reader sees the old file or the new one, never half
of one, and a failure leaves nothing behind.
"""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE = 0o600


def write_private(path: Path | str, data: str | bytes, *, mode: int = PRIVATE) -> Path:
    """Write ``data`` to ``path`` atomically, created with ``mode`` (0600 by
    default); returns the path."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    payload = data.encode() if isinstance(data, str) else data
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(payload)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)  # the umask may have narrowed it; never widens past ``mode``
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


__all__ = ["PRIVATE", "write_private"]
