"""Atomic file output: write to a temporary file beside the target, rename only on success.

An interrupted or failed write (Ctrl-C, a failed validation, a full disk) leaves nothing at the
target path, and no half-written file anywhere. What does arrive has the modes a plain ``open`` or
``mkdir`` would have given it under the process umask, not the 0600 of the temporary file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

STDOUT = "-"  # as a JSON path: write to standard output, as most command-line tools read "-"


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; it becomes ``path`` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        honour_umask(tmp)  # mkstemp made it 0600, and a rename keeps the mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def honour_umask(path: str | os.PathLike) -> None:
    """Give ``path`` (a file, or a folder and all it holds) the modes that the process umask grants a new one.

    For output staged in a temporary place (``mkstemp`` and ``mkdtemp`` create 0600 and 0700), so that another
    user, a container or a web server can read what the toolkit wrote wherever the umask lets them.
    """
    mask = current_umask()
    path = Path(path)
    if not path.is_dir():
        os.chmod(path, 0o666 & ~mask)
        return
    os.chmod(path, 0o777 & ~mask)
    for root, dirs, files in os.walk(path):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~mask)


def current_umask() -> int:
    """The process umask, read from /proc where it is there (Linux); ``os.umask`` can only read it by setting it."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o077)  # elsewhere set and restore at once; a file another thread creates meanwhile is private
    os.umask(mask)
    return mask


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json(path: str | os.PathLike, data: object) -> None:
    """``data`` as indented JSON in ``path`` (atomically), or on standard output where ``path`` is ``-``."""
    text = json.dumps(data, indent=2, default=_jsonable) + "\n"
    if os.fspath(path) == STDOUT:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _jsonable(value: object) -> object:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def save_image(path: str | os.PathLike, pixels) -> None:
    """An RGB (H×W×3) or label (H×W) uint8 array as a JPEG (``.jpg``/``.jpeg``) or PNG, written atomically."""
    from PIL import Image

    path = Path(path)
    jpeg = path.suffix.lower() in (".jpg", ".jpeg")
    with atomic_output(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="JPEG" if jpeg else "PNG", **({"quality": 92} if jpeg else {}))
