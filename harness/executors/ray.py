"""Chunks as Ray tasks: ``harness run SUITE --executor ray [--address ADDRESS]``.

Each chunk becomes one task. A task rebuilds the plan from the suite's text in its worker
process (once per process: models and data stay loaded between the tasks a worker runs),
runs its chunk and returns the chunk's output, which the driver saves into the run folder.
Tasks ask for one GPU each where the cluster has GPUs. A task whose worker dies (a killed
process, a lost node) is retried by Ray (``max_retries``); an error of the suite or a plugin
is returned, not raised, so it fails its case without being retried. The numbers are those of
a run in one process: a chunk's work does not depend on where it runs.

Ray is an optional dependency: ``pip install 'robustness-harness[ray]'``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Callable, Iterator

from ..errors import HarnessError
from . import ChunkDone, run_one

if TYPE_CHECKING:
    from ..plan import Case, Chunk, Plan
    from ..runner import RunOptions

#: times Ray runs a task again when its worker dies
MAX_RETRIES = 3

#: per worker process: payload digest -> (plan, env)
_STATE: dict[str, Any] = {}


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise HarnessError("--executor ray needs Ray, which is not installed",
                           hint="pip install 'robustness-harness[ray]'") from None
    return ray


def _payload(plan: "Plan", options: "RunOptions", device: str) -> dict[str, Any]:
    """Everything a worker needs to rebuild the plan and run its chunks."""
    return {
        "suite_text": plan.suite.text, "suite_file": plan.suite.file, "seed": plan.seed,
        "device": options.device, "driver_device": device,
        "data_dir": str(options.data_dir) if options.data_dir else None,
        "limit": options.limit, "reuse": str(options.reuse) if options.reuse else None,
        "cache_dir": str(options.cache_dir) if options.cache_dir else None,
        "use_cache": options.use_cache, "workers": options.workers,
        "threads": _threads(),
    }


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _worker_state(payload: dict[str, Any]) -> tuple[Any, Any]:
    from pathlib import Path

    from ..plan import Plan
    from ..plugins import default_registry
    from ..runner import LocalEnv, RunOptions
    from ..suite import parse_suite

    key = hashlib.sha256(repr(sorted(payload.items())).encode()).hexdigest()
    if key not in _STATE:
        import torch

        # the driver's thread count: float sums (and so the numbers) depend on it
        torch.set_num_threads(int(payload["threads"]))
        registry = default_registry()
        suite = parse_suite(payload["suite_text"], payload["suite_file"], registry)
        plan = Plan(suite, registry, payload["seed"])
        options = RunOptions(
            device=payload["device"], seed=payload["seed"],
            data_dir=Path(payload["data_dir"]) if payload["data_dir"] else None,
            limit=payload["limit"], reuse=Path(payload["reuse"]) if payload["reuse"] else None,
            cache_dir=Path(payload["cache_dir"]) if payload["cache_dir"] else None,
            use_cache=payload["use_cache"], workers=payload["workers"])
        from ..context import resolve_device

        device = resolve_device(options.device or suite.device)
        env = LocalEnv(plan, options, device, plan.seed)
        plan.chunked(env.try_data)
        _STATE[key] = (plan, env)
    return _STATE[key]


def _run_task(payload: dict[str, Any], case_key: str, chunk_index: int) -> ChunkDone:
    """The body of a task: run one chunk in this worker (the plan built once per process)."""
    plan, env = _worker_state(payload)
    case = plan.case(case_key)
    chunk = case.chunks[chunk_index]
    done = run_one(env, case, chunk)
    done.models = {mid: asdict(info) for mid, info in env.infos.items()
                   if mid in plan.models_used(case)}
    # the driver has its own plan: send back only names, not the objects
    done.case, done.chunk = case_key, chunk_index   # type: ignore[assignment]
    return done


class RayExecutor:
    """Runs chunks as Ray tasks on the cluster at ``options.address`` (a local Ray instance
    when None), one GPU per task where the cluster has GPUs."""

    def __init__(self, plan: "Plan", options: "RunOptions", device: str):
        self.ray = _import_ray()
        self.plan = plan
        self.options = options
        if not self.ray.is_initialized():
            kwargs: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": False,
                                      "include_dashboard": False}
            if options.address:
                kwargs["address"] = options.address
            # workers import the harness and the suite's factories from where the driver does
            kwargs["runtime_env"] = {"env_vars": {
                "PYTHONPATH": os.pathsep.join(p for p in [os.getcwd(),
                                                          os.environ.get("PYTHONPATH", "")]
                                              if p)}}
            try:
                self.ray.init(**kwargs)
            except Exception as exc:
                raise HarnessError(f"Ray could not start or reach its cluster "
                                   f"({type(exc).__name__}: {exc})",
                                   hint="check --address, or run without --executor ray") from None
            self._started = True
        else:
            self._started = False
        gpus = self.ray.cluster_resources().get("GPU", 0)
        self.task = self.ray.remote(_run_task).options(
            num_gpus=1 if gpus and (options.device or plan.suite.device) != "cpu" else 0,
            max_retries=MAX_RETRIES, retry_exceptions=False)
        self.payload = self.ray.put(_payload(plan, options, device))
        self._futures: list[Any] = []

    def run(self, work: list[tuple["Case", "Chunk"]],
            wanted: Callable[["Case"], bool]) -> Iterator[ChunkDone]:
        ray = self.ray
        where = {}
        for case, chunk in work:
            wanted(case)
            ref = self.task.remote(self.payload, case.key, chunk.index)
            where[ref] = (case, chunk)
        pending = list(where)
        self._futures = pending
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            self._futures = pending
            for ref in ready:
                case, chunk = where[ref]
                try:
                    done = ray.get(ref)
                except Exception as exc:   # the task could not finish, retries spent
                    yield ChunkDone(case, chunk, error=f"Ray task failed: "
                                                       f"{type(exc).__name__}: {exc}",
                                    error_kind="internal")
                    continue
                done.case, done.chunk = case, chunk
                yield done

    def close(self) -> None:
        for ref in self._futures:
            try:
                self.ray.cancel(ref, force=True)
            except Exception:
                pass
        self._futures = []
        if self._started:
            self.ray.shutdown()
