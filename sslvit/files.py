"""Writes that are whole or absent: every output is written under a temporary name in its own
folder and renamed into place, so a kill or a full disk never leaves a half-written file under
the real name. Lowest layer: data, models, train, eval and tokenizers all use it.

Every file written here gets the mode the user's umask gives (0644 under the usual 022), as
``open`` would: safetensors writes its files 0600, which colleagues could not read."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file


def current_umask() -> int:
    """The process's umask: Linux shows it in /proc/self/status; elsewhere POSIX can only read it
    by setting it, so it is set straight back (a file another thread creates in between would get 022)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def honour_umask(root: Path) -> None:
    """Give ``root`` (a file, or a folder and everything under it) the modes ``open`` and
    ``mkdir`` give under the umask: files 0o666 & ~umask, folders 0o777 & ~umask."""
    mask = current_umask()
    root = Path(root)
    paths = [root, *root.rglob("*")] if root.is_dir() else [root]
    for p in paths:
        if not p.is_symlink():
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` (with the umask's mode)
    when the body succeeds, remove it when it fails. Each writer gets its own temporary name
    (process id and a random token; the suffix kept, which numpy's savez needs), so writers of
    the same file at once, e.g. two runs building one data cache, each rename a whole file and
    the last one wins."""
    path = Path(path)
    tmp = path.with_name(f".tmp_{os.getpid()}_{secrets.token_hex(4)}_{path.name}")
    try:
        yield tmp
        honour_umask(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def cache_folder() -> Path:
    """sslvit's cache (the built embedded sets, the precision timings): ``$SSLVIT_CACHE``, else
    ``$XDG_CACHE_HOME/sslvit``, else ``~/.cache/sslvit`` (the XDG default)."""
    if os.environ.get("SSLVIT_CACHE"):
        return Path(os.environ["SSLVIT_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "sslvit"


WRITE_ERRORS = (OSError, SafetensorError)
"""What a write raises when its disk is full or gone: safetensors' is a SafetensorError ("I/O error:
No space left on device"), not an OSError."""


class OutputError(OSError):
    """An output cannot be written where it was asked for; the message says why and what to pass."""


def written(path: Path, write: Optional[Callable[[], None]], fix: str) -> None:
    """``write()`` of ``path`` (its folder made first), or OutputError: one sentence naming the path,
    why it cannot be written and ``fix`` (safetensors' own error and PIL's are no sentence for a user).
    ``write`` None: the path is only checked, before long work that ends in it; nothing is made, so
    work that then fails leaves no empty folder behind."""
    path = Path(path)
    try:
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, "a folder")
        if write is None:
            _check_writable_folder(path.parent)
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise NotADirectoryError(errno.ENOTDIR, "a file is where its folder would be") from None
        write()
    except WRITE_ERRORS as e:
        raise OutputError(f"Cannot write '{path}' ({reason(e)}); "
                          f"{'free some space, or ' * disk_full(e)}{fix}.") from None


def reason(e: BaseException) -> str:
    """Why a write failed, as a sentence part: an OSError's own words ("No space left on device"),
    else the error's text (safetensors' SafetensorError has no strerror)."""
    return getattr(e, "strerror", None) or str(e)


def free_on_its_disk(path: Path) -> str:
    """The free space of the disk holding ``path``, as a sentence part ("0.00 GB free on its disk")."""
    return f"{shutil.disk_usage(path).free / 1e9:.2f} GB free on its disk"


def write_errno(e: Optional[BaseException]) -> Optional[int]:
    """The errno a failed write carries: an OSError's, or the number safetensors names only in its
    text ("File too large (os error 27)"); None for an error without one (torch.save's RuntimeError)."""
    if getattr(e, "errno", None) is not None:
        return e.errno
    found = re.search(r"\(os error (\d+)\)", str(e))
    return int(found.group(1)) if found else None


def disk_full(e: Optional[BaseException]) -> bool:
    """Whether a write failed for a full disk or quota (ENOSPC, EDQUOT), where freeing space is the
    fix, not another folder."""
    return write_errno(e) in (errno.ENOSPC, errno.EDQUOT)


LOW_SPACE = 10**9
"""Under this many free bytes, a write that failed without naming why is taken for a full disk."""

_WRITE_ACCESS = "give yourself write permission to '{folder}'"
_MENDS = {errno.EROFS: "make its disk writable again (it is mounted read-only now)",
          errno.EFBIG: "lift the file-size limit that refused it (`ulimit -f`, or the file system's own)",
          errno.EACCES: _WRITE_ACCESS, errno.EPERM: _WRITE_ACCESS,
          errno.EIO: "check its disk (it reported an I/O error) or use another one"}


def mend_write(e: BaseException, folder: Path) -> str:
    """How to mend a write into ``folder`` that failed with ``e`` before it is tried again, as a
    clause, lower case first: free space for a full disk or quota, or for an error that names no
    cause (torch.save's) on a disk with under LOW_SPACE free; else the fix for the cause it names."""
    code = write_errno(e)
    try:
        low = code is None and shutil.disk_usage(folder).free < LOW_SPACE
    except OSError:  # the folder is gone: nothing to measure
        low = False
    if disk_full(e) or low:
        return "free some space"
    if code is None:
        return "find what refused the write (its disk has room)"
    return _MENDS.get(code, "mend the cause in brackets").format(folder=folder)


def _check_writable_folder(folder: Path) -> None:
    """OSError unless ``folder`` exists and takes new files, or could be made: its nearest existing
    ancestor is a folder that takes new entries."""
    nearest = next(p for p in (folder, *folder.parents) if p.exists() or p == p.parent)
    if not nearest.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "a file is where its folder would be")
    if hasattr(os, "statvfs") and os.statvfs(nearest).f_flag & os.ST_RDONLY:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))
    if not os.access(nearest, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))


def save_safetensors_atomic(state: dict[str, torch.Tensor], path: Path, metadata: Optional[dict] = None) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp), metadata=metadata)


def write_json_atomic(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2))


def save_figure_atomic(fig, path: Path, dpi: int) -> None:
    """A matplotlib ``Figure`` as a PNG at ``dpi`` (its size in inches x dpi = its pixels)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)


def existing(paths: Iterable[Path]) -> list[str]:
    """The names of ``paths`` that exist now: the earlier results a probe is about to replace."""
    return [Path(p).name for p in paths if Path(p).exists()]
