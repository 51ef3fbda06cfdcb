"""The ``ray`` executor: work units as Ray tasks, on a local Ray instance or a cluster.

Scheduling (see docs/executors.md):

- one Ray task per work unit (the cells of one model variant), so a variant is built or
  loaded once per task, and each task requests ``num_cpus`` / ``num_gpus``;
- a unit is submitted once every unit that builds one of its ancestor variants (the
  teacher for students and pruned teachers; the student, then the teacher, for pruned
  students) has finished, so the teacher is trained once, by one task, and its samples
  are in the shared cache before anything is compared with it (the cache's file lock
  would make concurrent builders safe, but they would wait for each other);
- results come back to this process, which stores them (workers write only artifacts
  to the shared cache); a task that raises or whose worker dies is retried
  ``max_retries`` times by Ray, then every cell of its unit is recorded as an error;
- every task runs with the run's one thread count (the worker sets it: the same rows as
  the ``local`` executor), whatever ``num_cpus`` it requests;
- closing the iterator (``--fail-fast``, Ctrl-C) cancels the outstanding tasks, and a
  Ray instance started here is shut down at the end.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from harness import Executor, UserError, Worker, WorkUnit

log = logging.getLogger(__name__)

MISSING_RAY = "execution.executor: 'ray' needs Ray: pip install -e \".[ray]\""


class RayOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    address: str | None = Field(
        None, description="Ray cluster to use: 'auto' (the cluster this machine belongs to), 'ray://host:10001' or "
                          "'host:6379'; unset: start a local Ray instance for the run")
    num_cpus: float = Field(1.0, ge=0, description="CPUs each task (work unit) requests")
    num_gpus: float | None = Field(
        None, ge=0, description="GPUs each task requests (fractions share a GPU); unset: 1 when device is 'cuda', "
                                "or 'auto' on a cluster with GPUs, else 0")
    max_workers: int | None = Field(
        None, ge=1, description="most tasks in flight at once; unset: as many as Ray schedules. A local instance "
                                "then gets max_workers * num_cpus CPUs")
    max_retries: int = Field(1, ge=0, description="retries of a task that raised or whose worker died")
    init_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="extra keyword arguments of ray.init (e.g. runtime_env, log_to_driver)")


class RayExecutor(Executor):
    """Run work units as Ray tasks (a local Ray instance, or a cluster through ``address``).

    One task per work unit (the cells of one model variant), requesting ``num_cpus`` and
    ``num_gpus``; units that derive from a variant wait until the unit that builds it has
    finished. Workers read the matrix file and write artifacts to the cache folder
    themselves: both must be at the same absolute path on every node (a shared
    filesystem). Results return to this process, which stores them. A failed task (an
    exception, a dead worker) is retried ``max_retries`` times, then its cells are
    recorded as errors. Rows are identical to the ``local`` executor's. Needs the
    ``ray`` extra: ``pip install -e ".[ray]"``.
    """

    name = "ray"
    Options = RayOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        if not _ray_importable():
            # here, not in run(): the runner creates the executor before any work starts
            raise UserError(MISSING_RAY)

    @classmethod
    def contract_fixtures(cls, folder: Any) -> dict[str, Any]:
        """harness.testing's contract skips (with the reason) where the optional extra is missing."""
        return {} if _ray_importable() else {"skip": MISSING_RAY}

    def run(self, units: Iterable[WorkUnit], worker: Worker) -> Iterator[Any]:
        try:
            import ray
        except ImportError:
            raise UserError(MISSING_RAY) from None
        units = list(units)
        if not units:
            return
        started_here = self._connect(ray)
        try:
            yield from self._schedule(ray, units, worker, started_here)
        finally:
            if started_here:
                # a local instance is stopped; a cluster we connected to is only disconnected
                ray.shutdown()

    # ------------------------------------------------------------------ connection
    def _connect(self, ray: Any) -> bool:
        """Initialise Ray unless the caller already did; return whether we did."""
        if ray.is_initialized():
            return False
        o = self.options
        kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
        if o.address is None:
            # "local": a new instance even when RAY_ADDRESS or a running cluster could be found
            kwargs.update(address="local", include_dashboard=False)
            if o.max_workers is not None:
                kwargs["num_cpus"] = max(1, math.ceil(o.max_workers * o.num_cpus))
        else:
            kwargs["address"] = o.address
        kwargs.update(o.init_kwargs)
        try:
            ray.init(**kwargs)
        except Exception as exc:  # noqa: BLE001 - Ray raises bare Exceptions (e.g. a node start timing out)
            # not a diffbench bug: an unreachable cluster, bad init_kwargs, an overloaded machine
            if o.address is not None:
                where = f"execution.address: cannot connect to the Ray cluster at '{o.address}'"
            else:
                where = "execution.executor: 'ray' could not start a local Ray instance"
            raise UserError(f"{where}: {describe_failure(exc)}") from None
        return True

    def _gpus_per_task(self, ray: Any, worker: Worker) -> float:
        if self.options.num_gpus is not None:
            return float(self.options.num_gpus)
        device = str(worker.device)
        if device == "cpu":
            return 0.0
        if device.startswith("cuda"):
            return 1.0
        return 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0

    def _check_feasible(self, ray: Any, num_gpus: float, started_here: bool) -> None:
        """A task the cluster can never place would wait forever: say so instead."""
        resources = ray.cluster_resources()
        for key, want, option in (("CPU", self.options.num_cpus, "num_cpus"), ("GPU", num_gpus, "num_gpus")):
            have = resources.get(key, 0)
            if want <= have:
                continue
            message = (f"execution.{option}: each task requests {want:g} {key}(s) but the Ray cluster has {have:g}"
                       + ("; set num_gpus = 0 or device = \"cpu\"" if key == "GPU" else ""))
            if started_here and self.options.address is None:
                raise UserError(message)
            log.warning("%s (waiting for the cluster to grow)", message)

    # ------------------------------------------------------------------ scheduling
    def _schedule(self, ray: Any, units: list[WorkUnit], worker: Worker, started_here: bool) -> Iterator[Any]:
        o = self.options
        num_gpus = self._gpus_per_task(ray, worker)
        self._check_feasible(ray, num_gpus, started_here)
        remote = ray.remote(_run_unit)
        task_options = dict(
            num_cpus=o.num_cpus,
            num_gpus=num_gpus,
            max_retries=o.max_retries,  # the worker died (killed for memory, segfault, lost node)
            retry_exceptions=True,  # the task raised (e.g. the matrix could not be loaded there)
        )
        deps = unit_dependencies(units)
        worker_ref = ray.put(worker)  # pickled once (the worker drops its in-process state)
        waiting = list(range(len(units)))
        running: dict[Any, tuple[int, float]] = {}
        done: set[int] = set()

        def submit_ready() -> None:
            for i in list(waiting):
                if o.max_workers is not None and len(running) >= o.max_workers:
                    return
                if not deps[i] <= done:
                    continue
                waiting.remove(i)
                task = remote.options(**task_options, name=f"diffbench:{units[i].name}")
                ref = task.remote(worker_ref, units[i])
                running[ref] = (i, time.perf_counter())

        try:
            submit_ready()
            while running:
                ready, _ = ray.wait(list(running), num_returns=1)
                for ref in ready:
                    i, t0 = running.pop(ref)
                    try:
                        results = ray.get(ref)
                    except Exception as exc:  # noqa: BLE001 - the task failed after its retries
                        results = self._failed(units[i], worker, exc, time.perf_counter() - t0)
                    done.add(i)
                    # hand out the units that waited for this one before storing its results
                    submit_ready()
                    yield from results
            if waiting:  # pragma: no cover - unit_dependencies only points at earlier-finishing units
                raise RuntimeError(f"ray executor: {len(waiting)} units never became ready")
        finally:
            for ref in running:
                ray.cancel(ref)  # queued tasks are dropped, running ones interrupted; neither is retried

    def _failed(self, unit: WorkUnit, worker: Worker, exc: Exception, duration: float) -> list[Any]:
        message = f"{describe_failure(exc)} (on Ray, {self.options.max_retries + 1} attempt(s))"
        log.info("%s: %s", unit.name, message)  # the runner reports each failed cell
        return list(worker.error_results(unit, message, duration))


def unit_dependencies(units: Sequence[Any]) -> list[set[int]]:
    """For each unit, the indices of the units that build one of its ancestor variants.

    An ancestor that no unit of this run builds (its cells are stored
    already) is built, or loaded from the cache, by whichever task needs it first.
    """
    builder: dict[Any, int] = {}
    for i, unit in enumerate(units):
        builder.setdefault(unit.variant, i)
    deps: list[set[int]] = []
    for unit in units:
        mine: set[int] = set()
        parent = unit.variant.parent()
        while parent is not None:
            if parent in builder:
                mine.add(builder[parent])
            parent = parent.parent()
        deps.append(mine)
    return deps


def describe_failure(exc: BaseException) -> str:
    """One line for a failed Ray task: the task's own exception, or Ray's reason (dead worker, OOM)."""
    cause = getattr(exc, "cause", None)  # RayTaskError wraps what the task raised
    if isinstance(cause, BaseException):
        exc = cause
    text = " ".join(str(exc).split())
    if len(text) > 400:
        text = text[:397] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__





def _ray_importable() -> bool:
    if "ray" in sys.modules:
        return sys.modules["ray"] is not None  # None: a test (or the user) blocked the import
    import importlib.util

    return importlib.util.find_spec("ray") is not None


# ---------------------------------------------------------------------- in the Ray worker

#: (identity, worker) reused by the tasks that one Ray worker process runs for the same
#: matrix, so the matrix is loaded and the teacher restored once per process, not per unit
_REUSED: list[tuple[Any, Worker]] = []


def _run_unit(worker: Worker, unit: WorkUnit) -> list[Any]:
    """The Ray task: every cell of one unit (the results travel back pickled)."""
    if _REUSED and _REUSED[0][0] == worker.identity:
        worker = _REUSED[0][1]
    else:
        _REUSED[:] = [(worker.identity, worker)]
    return list(worker(unit))
