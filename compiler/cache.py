"""A content-addressed cache of target builds (issue 16), shared by `tapeout build` and `tapeout compile`.

The key of one target build (``cache_key``) is a sha256 over everything that decides its bytes:
the input files' bytes (model, weights, data; by content and name, not folder), the normalized
options, the versions of the tools that write the bytes, and tapeout's version (``build_fingerprint``:
in a source checkout, with a hash of its code).

Layout under the cache root (``cache_dir()``)::

    ab/abcdef.../files/...        a copy of the target's output folder
    ab/abcdef.../manifest.json    {"version": 1, "key", "files": [{"path", "sha256", "size", "exec"}], "meta"}
    ab/abcdef.../last-used        empty; its mtime is the last get() (prune evicts the oldest first)
    locks/KEY.lock                flock(2) per key, around put() and get()'s verify + touch
    tmp/                          staging; a finished entry is renamed into place in one step

``get`` re-hashes every file against the manifest: a missing, truncated or corrupt entry is removed
and ``get`` returns None, so the caller rebuilds. Concurrent processes may share one root: writes
are staged then renamed (atomic), and a second writer of the same key keeps the first valid entry.
Symlinks are never followed inside an entry and never stored.

Standard library only: `tapeout compile` imports this before any framework and a no-op rebuild
must finish in well under a second.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tapeout.compiler.errors import UsageError
from tapeout.compiler.staging import write_if_changed

__all__ = ["DEFAULT_TOOLS", "Cache", "CorruptEntry", "Entry", "build_fingerprint", "cache_dir", "cache_key",
           "file_sha256", "parse_size", "source_fingerprint", "tool_versions"]

# The tools whose versions decide the bytes a target writes (g++ builds the hls4ml C-sim library).
DEFAULT_TOOLS = ("tensorflow", "keras", "ai-edge-litert", "onnx", "onnxruntime", "hls4ml", "numpy", "g++",
                 "ethos-u-vela", "tflite-micro")  # tflite-micro measures the arena in model.h
# A tool name may be installed under several distribution names.
_DISTRIBUTIONS = {"tensorflow": ("tensorflow", "tensorflow-cpu", "tf-nightly")}
_KEY = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 20
_MANIFEST_VERSION = 2  # 2: folders recorded too (an hls4ml project's empty tb_data/)
_STALE_TMP_S = 3600.0  # staging folders older than this belonged to a process that died


@dataclass(frozen=True)
class ToolCache:
    """A cache a tool keeps beside the entries: the folder ``name`` under the cache root, or the one
    the variable ``env`` names ("off": none). Each subfolder whose name matches ``unit`` is one
    unit the writer touches on every use; `info` counts the units, `clear` removes them, and
    `prune` evicts them with the entries, least recently used first. Nothing else in a folder the
    user named is tapeout's to remove."""

    name: str
    env: str
    unit: str  # a regular expression for a unit folder's name

    def folder(self, root: Path) -> Path | None:
        where = os.environ.get(self.env, "")
        if where.lower() == "off":
            return None
        return Path(where).expanduser() if where else root / self.name

    def units(self, root: Path) -> list[Path]:
        """The unit folders (and the writer's temporary ``.tmp-*`` ones) present, sorted."""
        folder = self.folder(root)
        if folder is None or not folder.is_dir() or folder.is_symlink():
            return []
        return sorted(d for d in folder.iterdir() if d.is_dir() and not d.is_symlink()
                      and (re.fullmatch(self.unit, d.name) or d.name.startswith(".tmp-")))


# targets/hls4ml/project.py: one precompiled header and its compiled objects per key folder.
HLS4ML_PCH = ToolCache("hls4ml-pch", "TAPEOUT_HLS4ML_PCH_DIR", r"[0-9a-f]{32}")
TOOL_CACHES = (HLS4ML_PCH,)


# ---------------------------------------------------------------- where and what
def cache_dir() -> Path:
    """$TAPEOUT_CACHE_DIR, else $XDG_CACHE_HOME/tapeout, else ~/.cache/tapeout (empty values count as unset)."""
    if os.environ.get("TAPEOUT_CACHE_DIR"):
        return Path(os.environ["TAPEOUT_CACHE_DIR"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "tapeout"
    return Path.home() / ".cache" / "tapeout"


_TOOL_VERSIONS: dict[str, str] = {}


def tool_versions(names: Iterable[str] = DEFAULT_TOOLS) -> dict[str, str]:
    """name -> installed version, or "absent". Python packages via importlib.metadata (nothing is
    imported); "g++" via `g++ -dumpfullversion`. Memoized per process."""
    out = {}
    for name in names:
        if name not in _TOOL_VERSIONS:
            _TOOL_VERSIONS[name] = _gxx_version() if name == "g++" else _dist_version(name)
        out[name] = _TOOL_VERSIONS[name]
    return out


def _dist_version(name: str) -> str:
    from importlib import metadata  # imported here: it costs ~15 ms, and only key computation needs it

    for dist in _DISTRIBUTIONS.get(name, (name,)):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return "absent"


def _gxx_version() -> str:
    import subprocess

    gxx = shutil.which("g++")
    if gxx is None:
        return "absent"
    try:
        done = subprocess.run([gxx, "-dumpfullversion"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return "absent"
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else "absent"


# The folders tapeout's package-dir maps (pyproject.toml): compiler/, targets/, runtime/.
_PACKAGE_DIRS = ("compiler", "targets", "runtime")


def source_fingerprint(root: Path) -> str:
    """sha256 over the files of tapeout's package folders under ``root`` (path and bytes, sorted;
    __pycache__ left out): ~150 files, a few ms."""
    files = []
    for sub in _PACKAGE_DIRS:
        for dirpath, dirnames, filenames in os.walk(root / sub):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            files += [(Path(dirpath) / name).relative_to(root).as_posix() for name in filenames]
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(rel.encode() + b"\0")
        h.update((root / rel).read_bytes() + b"\0")
    return h.hexdigest()


@functools.cache
def build_fingerprint() -> str:
    """tapeout's part of every cache key: its version, and for a source checkout (an editable
    install, as `make` makes) a hash of its code too. The version alone let a checkout restore
    artifacts that an older commit of the same version had built. Memoized per process."""
    from tapeout.compiler.version import __version__

    root = Path(__file__).resolve().parent.parent
    source = (root / "pyproject.toml").is_file() and all((root / d).is_dir() for d in _PACKAGE_DIRS)
    return f"{__version__}+src.{source_fingerprint(root)[:16]}" if source else __version__


_FILE_HASHES: dict[tuple[str, int, int, int], str] = {}


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's bytes, read in chunks; memoized by (path, inode, size, mtime_ns) in this process."""
    p = os.path.abspath(path)
    st = os.stat(p)
    memo = (p, st.st_ino, st.st_size, st.st_mtime_ns)
    if memo in _FILE_HASHES:
        return _FILE_HASHES[memo]
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    # File timestamps are only a few ms fine: a file changed within the last 2 s might change again
    # without its stamp moving, so it is not memoized (git's "racy clean" rule).
    if time.time_ns() - st.st_mtime_ns > 2_000_000_000:
        _FILE_HASHES[memo] = h.hexdigest()
    return h.hexdigest()


def cache_key(*, inputs: Sequence[str | os.PathLike[str]] | Mapping[str, str | os.PathLike[str] | None],
              options: Mapping[str, Any], tools: Mapping[str, str], tapeout_version: str) -> str:
    """The 64-hex key of one target build.

    ``inputs``: the files read, either a list (position, base name and bytes are hashed) or a mapping
    role -> path (role, base name and bytes; a None path is recorded as absent), so that the same
    bytes in another folder give the same key while swapping two roles does not. ``options`` must be
    JSON-serializable (TypeError otherwise); it is normalized with sorted keys.
    """
    if isinstance(inputs, Mapping):
        files: list[Any] = [[role, None if p is None else [os.path.basename(p), file_sha256(p)]]
                            for role, p in sorted(inputs.items())]
    else:
        files = [[i, os.path.basename(p), file_sha256(p)] for i, p in enumerate(inputs)]
    doc = {"v": 1, "inputs": files, "options": options, "tools": dict(tools), "tapeout": tapeout_version}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """"500M" -> 524288000, "2G", "1.5G", "10KiB", "1024" (bytes); binary units. UsageError on junk."""
    m = _SIZE.fullmatch(str(text).strip())
    if not m:
        raise UsageError(f"size {text!r}: expected bytes with an optional K, M, G or T suffix, e.g. 500M or 2G")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


# ---------------------------------------------------------------- entries
class CorruptEntry(Exception):
    """An entry failed its hash check while being restored; it has been removed. Rebuild."""


@dataclass(frozen=True)
class Entry:
    """One verified cache entry. ``files``: the manifest's list (path, sha256, size, exec); ``dirs``:
    every folder of the stored tree, so a restore recreates empty ones too."""

    key: str
    path: Path
    files: tuple[Mapping[str, Any], ...]
    meta: dict[str, Any]
    _cache: Cache = field(repr=False, compare=False)
    dirs: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        return sum(int(f["size"]) for f in self.files)

    def restore(self, dest: str | os.PathLike[str], *, remove_extra: bool = False,
                reuse: str | os.PathLike[str] | None = None) -> list[str]:
        """Copy the entry's files into ``dest`` (created), byte-identical, and return the relative paths
        written. A file already holding the same bytes is left untouched (its mtime too), so build tools
        with restat see no change. Each write is a temp file renamed over the old one. With
        ``remove_extra``, files under ``dest`` that the entry lacks are deleted. Every byte copied is
        hashed again; on a mismatch the entry is removed and CorruptEntry is raised.

        ``reuse``: a folder that may already hold the entry's files (the installed output): a file
        there whose hash matches is hard-linked into ``dest`` instead of copied, so restoring an
        unchanged build reads it once and writes nothing."""
        dest = Path(dest)
        written: list[str] = []
        for rel in self.dirs:
            (dest / rel).mkdir(parents=True, exist_ok=True)
        with self._cache._lock(self.key):
            for f in self.files:
                rel = f["path"]
                if reuse is not None and not (dest / rel).exists() and _link_if_same(Path(reuse) / rel, dest / rel, f):
                    written.append(rel)
                    continue
                try:
                    data = _read_inside(self.path / "files", rel)
                except OSError as e:
                    self._cache._discard(self.key)
                    raise CorruptEntry(f"cache entry {self.key[:12]}: {rel}: {e.strerror or e}") from None
                if hashlib.sha256(data).hexdigest() != f["sha256"]:
                    self._cache._discard(self.key)
                    raise CorruptEntry(f"cache entry {self.key[:12]}: {rel} does not match its hash")
                if write_if_changed(dest / rel, data, bool(f.get("exec"))):
                    written.append(rel)
        if remove_extra and dest.is_dir():
            keep = {f["path"] for f in self.files}
            for rel in _walk_files(dest):
                if rel not in keep:
                    (dest / rel).unlink()
        return written


class Cache:
    """The cache under ``root`` (default ``cache_dir()``); created on first write."""

    def __init__(self, root: str | os.PathLike[str] | None = None):
        self.root = Path(root) if root is not None else cache_dir()

    # -- public
    def get(self, key: str) -> Entry | None:
        """The verified entry for ``key`` (its last-used stamp updated), or None. A corrupt or
        incomplete entry is removed and gives None."""
        _check_key(key)
        if not self._entry_dir(key).exists():  # a miss takes no lock and creates nothing
            return None
        with self._lock(key):
            entry = self._verified(key)
            if entry is None:
                self._discard(key)
                return None
            _touch(entry.path / "last-used")
            return entry

    def put(self, key: str, folder: str | os.PathLike[str], meta: Mapping[str, Any] | None = None) -> Entry:
        """Store a copy of ``folder`` (regular files only: ValueError on a symlink or special file) with
        ``meta`` (JSON-serializable) under ``key``. When a valid entry exists already, it is kept and
        returned (builds are deterministic, so it holds the same bytes)."""
        _check_key(key)
        src = Path(folder)
        if not src.is_dir():
            raise ValueError(f"cache put: {src} is not a folder")
        # Key order kept: a cached report entry must restore the same bytes the build wrote.
        meta_doc = json.loads(json.dumps(dict(meta or {})))  # fails early if not JSON
        with self._lock(key):
            existing = self._verified(key)
            if existing is not None:
                _touch(existing.path / "last-used")
                return existing
            self._discard(key)
            tmp_root = self.root / "tmp"
            tmp_root.mkdir(parents=True, exist_ok=True)
            stage = Path(tempfile.mkdtemp(prefix=key[:16] + ".", dir=tmp_root))
            try:
                files = []
                for rel in _walk_files(src, refuse_links=True):
                    data = (src / rel).read_bytes()
                    is_exec = bool(os.stat(src / rel).st_mode & stat.S_IXUSR)
                    out = stage / "files" / rel
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_bytes(data)
                    files.append({"path": rel, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
                                  "exec": is_exec})
                (stage / "files").mkdir(exist_ok=True)
                dirs = _walk_dirs(src)
                manifest = {"version": _MANIFEST_VERSION, "key": key, "files": files, "dirs": dirs, "meta": meta_doc}
                (stage / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
                _touch(stage / "last-used")
                final = self._entry_dir(key)
                final.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.rename(stage, final)
                except OSError as e:
                    # Someone holding a lock file we no longer share (clear() raced us) got there first.
                    if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                        raise
                    existing = self._verified(key)
                    if existing is None:
                        raise
                    return existing
            finally:
                if stage.exists():
                    shutil.rmtree(stage, ignore_errors=True)
            entry = self._verified(key)
            if entry is None:  # only if the disk lies to us
                raise OSError(f"cache entry {key[:12]} did not verify right after being written")
            return entry

    def info(self) -> dict[str, Any]:
        """{"root": str, "entries": N, "bytes": total size of the entries' files on disk,
        "tool_bytes": the size of the tools' caches (TOOL_CACHES)}."""
        entries = list(self._entries())
        tools = sum(_tree_bytes(d) for tool in TOOL_CACHES for d in tool.units(self.root))
        return {"root": str(self.root), "entries": len(entries), "bytes": sum(b for _, b, _ in entries),
                "tool_bytes": tools}

    def clear(self) -> int:
        """Remove every entry, staging folder and tool cache; return how many entries went."""
        n = 0
        for key, _, _ in list(self._entries()):
            with self._lock(key):
                self._discard(key)
            n += 1
        shutil.rmtree(self.root / "tmp", ignore_errors=True)
        for tool in TOOL_CACHES:
            for d in tool.units(self.root):
                _remove_tree(d)
            if tool.folder(self.root) == self.root / tool.name:  # its own folder, not one the user named
                with contextlib.suppress(OSError):
                    (self.root / tool.name).rmdir()
        return n

    def prune(self, max_bytes: int) -> int:
        """Evict the least recently used entries and tool-cache units (entries by their last-used
        stamp, units by their folder's time, which the writer touches on use) until together they
        take at most ``max_bytes``; also drop staging folders left by dead processes. Return how
        many entries and units went."""
        if max_bytes < 0:
            raise UsageError(f"cache size {max_bytes}: must not be negative")
        self._drop_stale_staging()
        found: list[tuple[int, str, int, Path | None]] = [(used, key, size, None)
                                                          for key, size, used in self._entries()]
        for tool in TOOL_CACHES:
            for d in tool.units(self.root):
                with contextlib.suppress(OSError):
                    found.append((os.lstat(d).st_mtime_ns, str(d), _tree_bytes(d), d))
        found.sort(key=lambda e: (e[0], e[1]))
        total = sum(size for _, _, size, _ in found)
        n = 0
        for _, key, size, unit in found:
            if total <= max_bytes:
                break
            if unit is not None:
                _remove_tree(unit)
            else:
                with self._lock(key):
                    self._discard(key)
            total -= size
            n += 1
        return n

    parse_size = staticmethod(parse_size)

    # -- internals
    def _entry_dir(self, key: str) -> Path:
        return self.root / key[:2] / key

    @contextlib.contextmanager
    def _lock(self, key: str) -> Iterator[None]:
        locks = self.root / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        fd = os.open(locks / f"{key}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def _verified(self, key: str) -> Entry | None:
        """The entry if its manifest parses and every file matches its size and sha256, else None."""
        d = self._entry_dir(key)
        try:
            if any(_is_link_or_missing(p) for p in (d.parent, d, d / "files", d / "manifest.json")):
                return None
            manifest = json.loads(_read_inside(d, "manifest.json"))
            if manifest.get("version") != _MANIFEST_VERSION or manifest.get("key") != key:
                return None
            files = manifest["files"]
            for f in files:
                data = _read_inside(d / "files", f["path"])
                if len(data) != f["size"] or hashlib.sha256(data).hexdigest() != f["sha256"]:
                    return None
            dirs = tuple(manifest["dirs"])
            for rel in dirs:
                _safe_rel(rel)
            return Entry(key, d, tuple(files), manifest.get("meta") or {}, self, dirs)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _discard(self, key: str) -> None:
        d = self._entry_dir(key)
        if d.parent.is_symlink():  # never delete through a link that leads out of the cache
            d.parent.unlink()
        elif d.is_symlink():
            d.unlink()
        elif d.exists():
            # Rename first so a half-deleted folder is never seen under its key.
            gone = self.root / "tmp" / f"{key[:16]}.gone.{os.getpid()}.{time.monotonic_ns()}"
            gone.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(d, gone)
            except OSError:
                gone = d
            shutil.rmtree(gone, ignore_errors=True)

    def _entries(self) -> Iterator[tuple[str, int, int]]:
        """(key, bytes, last-used ns) of each entry folder present (valid or not)."""
        if not self.root.is_dir():
            return
        for shard in sorted(self.root.iterdir()):
            if len(shard.name) != 2 or shard.is_symlink() or not shard.is_dir():
                continue
            for d in sorted(shard.iterdir()):
                if not _KEY.fullmatch(d.name) or d.name[:2] != shard.name or d.is_symlink():
                    continue
                size = 0
                for dirpath, _, names in os.walk(d):  # os.walk does not follow symlinks by default
                    for n in names:
                        with contextlib.suppress(OSError):
                            size += os.lstat(os.path.join(dirpath, n)).st_size
                used = 0
                for stamp in ("last-used", "manifest.json"):
                    with contextlib.suppress(OSError):
                        used = os.lstat(d / stamp).st_mtime_ns
                        break
                yield d.name, size, used

    def _drop_stale_staging(self) -> None:
        tmp = self.root / "tmp"
        if not tmp.is_dir():
            return
        now = time.time()
        for d in tmp.iterdir():
            with contextlib.suppress(OSError):
                if now - os.lstat(d).st_mtime > _STALE_TMP_S:
                    if d.is_dir() and not d.is_symlink():
                        shutil.rmtree(d, ignore_errors=True)
                    else:
                        d.unlink()


# ---------------------------------------------------------------- file helpers
def _remove_tree(folder: Path) -> None:
    """Rename ``folder`` aside, then delete it: a writer never sees it half deleted under its name."""
    gone = folder.with_name(f".tmp-gone-{folder.name}-{os.getpid()}-{time.monotonic_ns()}")
    try:
        os.rename(folder, gone)
    except OSError:
        gone = folder
    shutil.rmtree(gone, ignore_errors=True)


def _tree_bytes(folder: Path) -> int:
    total = 0
    for dirpath, _, names in os.walk(folder):  # no symlinks followed; a missing folder walks nothing
        for n in names:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, n)).st_size
    return total


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise ValueError(f"cache key {key!r}: expected 64 lowercase hex characters")


def _is_link_or_missing(p: Path) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(p).st_mode)
    except FileNotFoundError:
        return True


def _safe_rel(rel: str) -> list[str]:
    parts = rel.split("/")
    if not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in rel or "\0" in rel:
        raise ValueError(f"bad path in cache manifest: {rel!r}")
    return parts


def _read_inside(base: Path, rel: str) -> bytes:
    """Read base/rel without following a symlink at any level below ``base`` (OSError if one is met)."""
    parts = _safe_rel(rel)
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        for part in parts[:-1]:
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nxt
        ffd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW, dir_fd=fd)
        try:
            if not stat.S_ISREG(os.fstat(ffd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file")
            with os.fdopen(ffd, "rb", closefd=False) as f:
                return f.read()
        finally:
            os.close(ffd)
    finally:
        os.close(fd)


def _walk_files(folder: Path, *, refuse_links: bool = False) -> list[str]:
    """Relative POSIX paths of the regular files under ``folder``, sorted; symlinks are not followed
    (with ``refuse_links``, a symlink or special file raises ValueError)."""
    out = []
    for dirpath, dirnames, names in os.walk(folder):
        for n in list(dirnames):
            full = os.path.join(dirpath, n)
            if os.path.islink(full):
                if refuse_links:
                    raise ValueError(f"cache put: {full} is a symlink; only regular files are cached")
                dirnames.remove(n)
        for n in names:
            full = os.path.join(dirpath, n)
            mode = os.lstat(full).st_mode
            if not stat.S_ISREG(mode):
                if refuse_links:
                    raise ValueError(f"cache put: {full} is not a regular file; only regular files are cached")
                continue
            out.append(os.path.relpath(full, folder).replace(os.sep, "/"))
    return sorted(out)


def _walk_dirs(folder: Path) -> list[str]:
    """Relative POSIX paths of the folders under ``folder`` (not following symlinks), sorted."""
    out = []
    for dirpath, dirnames, _ in os.walk(folder):
        for n in dirnames:
            out.append(os.path.relpath(os.path.join(dirpath, n), folder).replace(os.sep, "/"))
    return sorted(out)


def _link_if_same(src: Path, dst: Path, f: Mapping[str, Any]) -> bool:
    """Hard-link ``src`` to ``dst`` when it is a regular file with manifest entry ``f``'s bytes and mode."""
    try:
        st = os.lstat(src)
        if not (stat.S_ISREG(st.st_mode) and st.st_size == int(f["size"])
                and bool(st.st_mode & stat.S_IXUSR) == bool(f.get("exec")) and file_sha256(src) == f["sha256"]):
            return False
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.link(src, dst)
    except OSError:  # unreadable, or links refused (another file system): copy instead
        return False
    return True


def _touch(path: Path) -> None:
    now = time.time_ns()
    try:
        os.utime(path, ns=(now, now), follow_symlinks=False)
    except FileNotFoundError:
        path.touch()
        os.utime(path, ns=(now, now), follow_symlinks=False)
