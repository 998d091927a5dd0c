"""What the providers that start a stack share around it: the run directory
(configs, keys, logs, data) and the default progress line."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from harness.exceptions import ConfigurationError
from harness.progress import Progress, printer

#: The default ``progress`` callback: ``atendeai: <line>`` to stderr, flushed.
print_progress = printer("atendeai")


def make_run_dir(base_dir: Path | None, *, prefix: str) -> Path:
    """A fresh run directory inside ``base_dir`` (``None``: the system temp dir)."""
    if base_dir is not None:
        try:
            base_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigurationError(f"cannot create base directory {base_dir}: {error}") from None
    run_dir = Path(tempfile.mkdtemp(prefix=prefix, dir=base_dir))
    # Other users read inside it: PostgreSQL runs as its own OS user when we are
    # root, containers as theirs (the secrets inside are mode 0600/0700).
    run_dir.chmod(0o755)
    return run_dir


def remove_run_dir(run_dir: Path, *, keep: bool, say: Progress) -> None:
    """Remove it, or say where it was kept (``keep``: asked for, or a failed start)."""
    if keep:
        say(f"kept {run_dir} (configs, logs and data)")
        return
    shutil.rmtree(run_dir, ignore_errors=True)


__all__ = ["Progress", "make_run_dir", "print_progress", "remove_run_dir"]
