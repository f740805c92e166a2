"""Where sweep points run: a local process pool (concurrent.futures), or Ray tasks.

Both take the points to run and yield ``(point, result)`` as each finishes; neither schedules
anything itself. A point whose worker dies is run again up to ``max_retries`` times, then given
a row with status "crashed".

Local: ``ProcessPoolExecutor`` (fork: the CLI's driver never imports a framework, and the
children need not re-import tapeout; spawn for a caller that has loaded TensorFlow), at most N
points in flight. When a worker dies the pool breaks and
fails every point in flight; those are rerun one at a time, so a death is charged to the point
that caused it alone. Workers leave when the driver dies.

Ray: each point is one task declaring its resources (``num_cpus``; a synthesis point also holds
one unit of a custom resource such as ``vivado``, so a license-limited tool is never
oversubscribed), with ``max_retries`` for worker and node deaths. The model and data files
travel once through the object store (``ray.put``), not a shared file system; each node writes
them once into its temp folder, and builds there, through its own build cache.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, Sequence

from tapeout.compiler.errors import MissingToolError, UsageError
from tapeout.compiler.stages.spec import check_jobs
from tapeout.compiler.sweep.points import PointFn, execute
from tapeout.compiler.sweep.spec import Point

Result = dict[str, Any]
RAY_CONNECT_TIMEOUT_S = 20.0


def _crashed(why: str) -> Result:
    return {"status": "crashed", "error": why}


# ------------------------------------------------------------------ local
def _init_worker(log: str | None, parent: int) -> None:
    """Pool worker: library noise to a log file, and exit when the driver is gone (a killed
    `tapeout sweep` leaves no orphan building on)."""
    if log is not None:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


class LocalPool:
    name = "local"

    def __init__(self, jobs: int, *, max_retries: int = 2, log: Path | None = None):
        check_jobs(jobs)
        self.jobs = jobs
        self.max_retries = max_retries
        self.log = log

    def describe(self) -> str:
        return f"a local pool of {self.jobs} process{'es' if self.jobs > 1 else ''}"

    def run(self, points: Sequence[Point], outdir: Path, use_cache: bool,
            point_fn: PointFn | None = None) -> Iterator[tuple[Point, Result]]:
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
        from concurrent.futures.process import BrokenProcessPool

        # fork: cheap, and a point function defined in the caller's script works. A caller that has
        # loaded TensorFlow (its threads do not survive fork) gets fresh interpreters instead.
        context = multiprocessing.get_context("spawn" if "tensorflow" in sys.modules else "fork")
        todo = deque(points)
        suspects: deque[Point] = deque()  # in flight when a worker died: run alone until it is clear which
        deaths: dict[str, int] = {}
        while todo or suspects:
            pool = ProcessPoolExecutor(self.jobs, mp_context=context,
                                       initializer=_init_worker,
                                       initargs=(None if self.log is None else str(self.log), os.getpid()))
            running: dict[Any, Point] = {}
            lost: list[Point] = []
            try:
                broken = False
                while (todo or suspects or running) and not broken:
                    limit = 1 if suspects else self.jobs
                    while len(running) < limit and (suspects or todo) and not broken:
                        queue = suspects if suspects else todo
                        p = queue.popleft()
                        try:
                            running[pool.submit(execute, p.spec, outdir / "points" / p.id, use_cache, point_fn)] = p
                        except BrokenProcessPool:  # a worker died since the last wait
                            queue.appendleft(p)
                            broken = True
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    broken = broken or any(isinstance(f.exception(), BrokenProcessPool) for f in done)
                    if broken:
                        done, _ = wait(running)  # a broken pool fails every future it still holds
                    for f in done:
                        p = running.pop(f)
                        if isinstance(f.exception(), BrokenProcessPool):
                            lost.append(p)
                        else:
                            yield p, f.result()
            finally:
                pool.shutdown(wait=not lost, cancel_futures=True)
            if not lost:
                continue
            if len(lost) == 1:  # it ran alone (or the others finished): its own death
                p = lost[0]
                deaths[p.id] = deaths.get(p.id, 0) + 1
                if deaths[p.id] > self.max_retries:
                    yield p, _crashed(f"its worker process died {deaths[p.id]} times")
                else:
                    suspects.appendleft(p)
            else:
                suspects.extend(lost)


# -------------------------------------------------------------------- ray
def _ray_point(bundle: dict[str, Any], spec: Any, ident: str, use_cache: bool, point_fn: PointFn | None) -> Result:
    """A Ray task: the input files from the object store into this node's temp folder, then the point."""
    root = Path(tempfile.gettempdir()) / "tapeout-sweep" / bundle["digest"]
    paths: dict[str, Path] = {}
    for role, (name, data) in bundle["files"].items():
        p = root / "inputs" / role / name
        if not (p.is_file() and p.stat().st_size == len(data)):
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, p)  # atomic: tasks of one node may share the folder
        paths[role] = p
    cal = spec.calibration
    spec = replace(spec, model=paths["model"], weights=paths.get("weights"), eval_data=paths.get("eval"),
                   train=paths.get("train"), calibration=str(paths["calibration"]) if "calibration" in paths else cal)
    return execute(spec, root / "points" / ident, use_cache, point_fn)


def bundle_of(spec: Any) -> dict[str, Any]:
    """The files every point reads, as bytes with their base names, and a digest naming them."""
    files: dict[str, tuple[str, bytes]] = {}
    cal = None if spec.calibration in (None, "synthetic") else Path(spec.calibration)
    for role, p in (("model", spec.model), ("weights", spec.weights), ("calibration", cal),
                    ("eval", spec.eval_data), ("train", spec.train)):
        if p is not None:
            files[role] = (Path(p).name, Path(p).read_bytes())
    h = hashlib.sha256()
    for role, (name, data) in sorted(files.items()):
        h.update(f"{role}\0{name}\0{len(data)}\0".encode())
        h.update(data)
    return {"digest": h.hexdigest()[:16], "files": files}


def _probe(address: str) -> None:
    """Fail fast on an address nothing listens at (ray.init would wait minutes)."""
    text = address.removeprefix("ray://")
    if text in ("auto", "local") or "://" in text:
        return
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise UsageError(f"--ray {address}: expected HOST:PORT (the head's GCS port, e.g. 127.0.0.1:6379), "
                         "ray://HOST:PORT or auto")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=5.0):
            pass
    except OSError as e:
        raise MissingToolError(f"no Ray cluster reachable at {address}: {e.strerror or e}") from None


class RayExecutor:
    name = "ray"

    def __init__(self, address: str | None, *, cpus_per_point: float = 1.0, synth_resource: str = "vivado",
                 max_retries: int = 2, in_flight: int = 1000, verbose: bool = False):
        try:
            import ray
        except ImportError:
            raise MissingToolError("--ray needs Ray: pip install 'tapeout[ray]'") from None
        self.ray = ray
        self.address = address
        self.cpus = cpus_per_point
        self.synth_resource = synth_resource
        self.max_retries = max_retries
        self.in_flight = in_flight
        self.verbose = verbose
        self._owned = False

    def describe(self) -> str:
        return f"Ray at {self.address}" if self.address else "a local Ray instance"

    def connect(self) -> None:
        ray = self.ray
        if ray.is_initialized():
            return
        if self.address:
            _probe(self.address)
        box: dict[str, Any] = {}

        def init() -> None:
            try:
                ray.init(address=self.address, logging_level="ERROR", log_to_driver=False,
                         configure_logging=False, include_dashboard=False if not self.address else None)
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
                box["error"] = e

        from tapeout.compiler.quiet import captured_output

        # Ray's C++ client logs each failed connection attempt to fd 2: the user gets one line.
        with captured_output(enabled=not self.verbose):
            t = threading.Thread(target=init, daemon=True)
            t.start()
            t.join(RAY_CONNECT_TIMEOUT_S)
        if t.is_alive():
            raise MissingToolError(f"no Ray cluster answered at {self.address or 'the local address'} within "
                                   f"{RAY_CONNECT_TIMEOUT_S:.0f} s")
        if "error" in box:
            e = box["error"]
            raise MissingToolError(f"cannot connect to Ray at {self.address or 'auto'}: "
                                   f"{' '.join(str(e).split())[:300]}") from None
        self._owned = True

    def close(self) -> None:
        if self._owned:
            self.ray.shutdown()
            self._owned = False

    def run(self, points: Sequence[Point], outdir: Path, use_cache: bool,
            point_fn: PointFn | None = None) -> Iterator[tuple[Point, Result]]:
        ray = self.ray
        self.connect()
        if not points:
            return
        bundle = ray.put(bundle_of(points[0].spec))
        task = ray.remote(_ray_point)
        todo = deque(points)
        running: dict[Any, Point] = {}
        while todo or running:
            while todo and len(running) < self.in_flight:
                p = todo.popleft()
                opts: dict[str, Any] = {"num_cpus": self.cpus, "max_retries": self.max_retries,
                                        "retry_exceptions": False, "name": f"tapeout-sweep-{p.id}"}
                if p.synthesis:
                    opts["resources"] = {self.synth_resource: 1}
                running[task.options(**opts).remote(bundle, p.spec, p.id, use_cache, point_fn)] = p
            ready, _ = ray.wait(list(running), num_returns=1)
            for ref in ready:
                p = running.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayError as e:  # retries spent: the worker or node died each time
                    why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                    result = _crashed(f"{type(e).__name__} after {self.max_retries} retries: {why[:300]}")
                yield p, result


def executor_for(ray_address: str | None, use_ray: bool, jobs: int | None, **kw: Any) -> Any:
    if use_ray:
        return RayExecutor(ray_address or os.environ.get("RAY_ADDRESS") or None,
                           cpus_per_point=kw["cpus_per_point"], synth_resource=kw["synth_resource"],
                           max_retries=kw["max_retries"], verbose=kw.get("verbose", False))
    return LocalPool(jobs or default_jobs(), max_retries=kw["max_retries"], log=kw.get("log"))


def default_jobs() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)
