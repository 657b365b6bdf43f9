"""The one way this project writes a file: temporary file next to the target, fsync, rename.

``path`` is always either the previous complete file or the new complete one, whatever kills the
process (``os.replace`` is atomic on POSIX and Windows; the temporary file lives in the target's own
directory, so the rename never becomes a cross-filesystem copy). ``tempfile.mkstemp`` creates files
with mode 0600; the file gets ``0666 & ~umask`` instead, like any ``open(path, "w")``, so teammates
reading a shared run directory see checkpoints, configs and metrics as the umask says. A full disk
is a :class:`~bcd_lightning.utils.errors.StorageError` naming the file and the free space.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from bcd_lightning.utils.errors import StorageError


def current_umask() -> int:
    """The process umask (read from /proc where possible: setting it to read it races with threads)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(binary file)`` on a temporary file, then put it at ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if _disk_full(err):
            raise StorageError(
                f"Cannot write {path}: the disk is full or the quota is reached ({_free(path.parent)} free "
                f"on {path.parent}). Free space or move the run (paths.log_dir / BCD_ROOT). Original error: "
                f"{' '.join(str(err).split())}"
            ) from err
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    return atomic_write(path, lambda fh: fh.write(data))


def atomic_copy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Copy ``src`` so that ``dst`` is either the old file or the complete new one."""

    def copy(fh: IO[bytes]) -> None:
        with open(src, "rb") as source:
            shutil.copyfileobj(source, fh, length=16 << 20)

    return atomic_write(dst, copy)


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save(obj, path)`` so that ``path`` never holds a partial file."""
    import torch

    return atomic_write(path, lambda fh: torch.save(obj, fh))


def atomic_write_from_temp(path: str | os.PathLike[str], produce: Callable[[Path], Any]) -> Path:
    """For writers that need a file *name* (``torch.jit.save``, ``torch.onnx.export``, matplotlib):
    ``produce(tmp_path)`` writes a scratch file next to ``path``, which is then copied in atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, scratch = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part" + path.suffix)
    os.close(fd)
    try:
        produce(Path(scratch))
        atomic_write(path, lambda fh: _copy_into(Path(scratch), fh))
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(scratch)
    return path


def _copy_into(src: Path, fh: IO[bytes]) -> None:
    with open(src, "rb") as source:
        shutil.copyfileobj(source, fh, length=16 << 20)


def _disk_full(err: BaseException) -> bool:
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    # torch's zip writer reports a full disk as "[enforce fail at inline_container.cc...] ... file write
    # failed" (a RuntimeError without errno).
    text = str(err)
    return isinstance(err, RuntimeError) and (
        "file write failed" in text or "PytorchStreamWriter failed" in text
    )


def _free(directory: Path) -> str:
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return "unknown"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if free < 1024 or unit == "TiB":
            return f"{free:.0f} {unit}" if unit == "B" else f"{free:.1f} {unit}"
        free /= 1024
    return "unknown"


def fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
