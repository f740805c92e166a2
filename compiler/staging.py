"""The output folder: builds staged next to OUTDIR, installed under a lock, stale stages cleaned.

A compile builds into ``.NAME.tapeout-staging-XXXXXXXX`` next to OUTDIR and holds an flock on
that folder while it lives; the kernel drops the lock when the process dies, even by kill -9.
Creating a stage, cleaning stale ones and installing all happen under an flock on OUTDIR's
parent folder, so two compiles into one OUTDIR install one after the other (the second waits
seconds, not a whole build) and the result is one build whole: each target folder replaced in
one rename, ``report.json`` last. A stage no live process holds (left by kill -9 or a power
loss) is removed by the next compile into that OUTDIR, after moving back any previous target
folder the dead build had moved aside but not yet replaced.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from tapeout.compiler.errors import UsageError

try:
    import fcntl
except ImportError:  # no flock (Windows): builds still stage, without the locks
    fcntl = None  # type: ignore[assignment]

STAGING_MARK = ".tapeout-staging-"
OLD_PREFIX = ".old-"  # a previous target folder moved aside inside a stage while installing
_held: dict[Path, int] = {}  # stage -> the fd holding its lock
# Errors of writing, not of reading: always the output's. Permission errors only when about it.
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_DENIED = (errno.EACCES, errno.EPERM, errno.EROFS)


def _lock(path: Path, blocking: bool = True, follow: bool = False) -> int | None:
    """An fd holding an exclusive flock on ``path`` (a folder); None if another process holds it."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | (0 if follow else os.O_NOFOLLOW))
    if fcntl is None:
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError as e:
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):  # no flock here: go on unlocked
            os.close(fd)
            raise
    return fd


@contextmanager
def _parent_lock(outdir: Path) -> Iterator[None]:
    fd = _lock(_parent(outdir), follow=True)  # OUTDIR's parent may well be a symlink
    try:
        yield
    finally:
        os.close(fd)


def _parent(outdir: Path) -> Path:
    return outdir.parent if outdir.parent != Path("") else Path(".")


def _stale_stages(outdir: Path) -> list[Path]:
    pattern = re.compile(re.escape(f".{outdir.name}{STAGING_MARK}") + r"[a-z0-9_]{8}")
    return sorted(p for p in _parent(outdir).iterdir()
                  if pattern.fullmatch(p.name) and p.is_dir() and not p.is_symlink())


def clean_stale(outdir: Path) -> list[Path]:
    """Remove OUTDIR's stages that no live compile holds (call under the parent lock); returns them."""
    removed = []
    for stage in _stale_stages(outdir):
        fd = _lock(stage, blocking=False)
        if fd is None:  # a running compile's
            continue
        try:
            for old in stage.glob(f"{OLD_PREFIX}*"):  # killed between moving aside and replacing
                dst = outdir / old.name[len(OLD_PREFIX):]
                if not dst.exists():
                    os.replace(old, dst)
            shutil.rmtree(stage, ignore_errors=True)
            removed.append(stage)
        finally:
            os.close(fd)
    return removed


def open_stage(outdir: Path) -> Path:
    """A new, locked stage next to ``outdir`` (stale ones cleaned first); close it with close_stage."""
    parent = _parent(outdir)
    parent.mkdir(parents=True, exist_ok=True)
    with _parent_lock(outdir):
        clean_stale(outdir)
        stage = Path(tempfile.mkdtemp(prefix=f".{outdir.name}{STAGING_MARK}", dir=parent))
        _held[stage] = _lock(stage)
    return stage


def close_stage(stage: Path) -> None:
    shutil.rmtree(stage, ignore_errors=True)
    fd = _held.pop(stage, None)
    if fd is not None:
        os.close(fd)


def install(stage: Path, outdir: Path, folders: Sequence[str], files: Sequence[str] = ()) -> None:
    """Move finished target folders, then ``files`` (report.json), from ``stage`` into ``outdir``.

    A file of a target folder whose bytes equal the installed one's keeps the installed file
    (its inode and mtime), so build tools see only what changed (Ninja's ``restat``). ``files``
    are always replaced: report.json is the build's stamp, the target of ``--depfile``, and must
    be newer than the inputs after every compile or Make would rerun it every time.
    """
    with _parent_lock(outdir):
        outdir.mkdir(parents=True, exist_ok=True)
        for name in folders:
            dst = outdir / name
            if dst.is_dir() and not dst.is_symlink():
                keep_unchanged(dst, stage / name)
            if dst.exists():
                os.replace(dst, stage / f"{OLD_PREFIX}{name}")
            os.replace(stage / name, dst)
        for name in files:
            os.replace(stage / name, outdir / name)


def keep_unchanged(installed: Path, staged: Path) -> int:
    """Put the installed file in place of each staged file with the same bytes; returns how many.

    A hard link keeps the very file; where links are refused, the staged copy takes the old
    mtime. The installed folder itself is not touched: it is still replaced in one rename.
    """
    kept = 0
    for root, _dirs, names in os.walk(staged):
        for fname in names:
            new = Path(root) / fname
            old = installed / new.relative_to(staged)
            if new.is_symlink() or old.is_symlink() or not old.is_file():
                continue
            if os.path.samefile(old, new):  # already the installed file (a cache restore linked it)
                kept += 1
                continue
            if not _same_bytes(old, new):
                continue
            link = new.with_name(f"{new.name}{STAGING_MARK}link")
            try:
                os.link(old, link)
                os.replace(link, new)
            except OSError:
                st = old.stat()
                os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))
            kept += 1
    return kept


def _same_bytes(a: Path, b: Path, chunk: int = 1 << 20) -> bool:
    sa, sb = a.stat(), b.stat()
    if sa.st_size != sb.st_size or (sa.st_mode & 0o7777) != (sb.st_mode & 0o7777):
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(chunk), fb.read(chunk)
            if x != y:
                return False
            if not x:
                return True


def output_error(outdir: Path, exc: OSError) -> UsageError | None:
    """One line for a build that could not be written (full disk, read-only folder); None: not that."""
    if exc.errno in _FULL:
        why = "no space left" if exc.errno != errno.EFBIG else "file size limit reached"
    elif exc.errno in _DENIED and _about_output(outdir, exc):
        why = "read-only or not writable"
    else:
        return None
    where = f" ({exc.filename})" if exc.filename else ""
    return UsageError(f"{outdir}: cannot write the build: {why}{where}; {outdir} was left as it was")


def _about_output(outdir: Path, exc: OSError) -> bool:
    if exc.filename is None:
        return True
    parent = os.path.abspath(_parent(outdir))
    names = [exc.filename] + ([exc.filename2] if exc.filename2 else [])
    return any(os.path.abspath(os.fsdecode(n)).startswith(parent) for n in names if isinstance(n, (str, bytes)))


def write_if_changed(path: Path, data: bytes, executable: bool = False) -> bool:
    """Replace ``path`` with ``data`` atomically unless it holds those bytes already; True when written.

    An unchanged file keeps its inode and mtime (Ninja's restat; a cache restore over identical
    files), only its executable bit set right. A new file gets the umask's mode, like any output;
    a symlink at ``path`` is replaced, never followed.
    """
    mode = 0o777 if executable else 0o666
    try:
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode) and st.st_size == len(data) and path.read_bytes() == data:
            if bool(st.st_mode & stat.S_IXUSR) != executable:
                os.chmod(path, (st.st_mode | 0o111) if executable else (st.st_mode & ~0o111))
            return False
    except OSError:
        pass  # missing or unreadable: write it
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return True
