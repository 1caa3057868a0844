"""Executors: where the chunks of a plan run.

- :class:`LocalExecutor`: in this process, one chunk after another (the default);
- :class:`harness.executors.ray.RayExecutor`: as Ray tasks on a cluster (``--executor ray``),
  one GPU per task where the cluster has GPUs, retried when a worker dies.

An executor yields, for each chunk it ran, a :class:`ChunkDone`: the chunk's output, or why
it failed. The runner (:mod:`harness.runner`) does all the bookkeeping: what to run, saving,
summarizing cases; an executor only runs chunks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol

if TYPE_CHECKING:
    from ..kinds import ChunkOutput
    from ..plan import Case, Chunk


@dataclass
class ChunkDone:
    """A chunk an executor ran: its ``output``, or the error that stopped it (``error``,
    ``error_kind``: "input" or "internal", ``traceback``). ``models``: what the executor
    learnt loading the models it used (id -> :class:`harness.runner.ModelInfo` fields)."""

    case: "Case"
    chunk: "Chunk"
    output: "ChunkOutput | None" = None
    error: str | None = None
    error_kind: str | None = None
    traceback: str | None = None
    models: dict[str, dict[str, Any]] = field(default_factory=dict)


class Executor(Protocol):
    def run(self, work: list[tuple["Case", "Chunk"]],
            wanted: Callable[["Case"], bool]) -> Iterator[ChunkDone]:
        """Run the chunks of ``work`` (in any order), skipping those of a case for which
        ``wanted(case)`` has become false (one of its chunks failed)."""
        ...

    def close(self) -> None: ...


def run_one(env: Any, case: "Case", chunk: "Chunk") -> ChunkDone:
    """Run one chunk in this process, turning every failure into a :class:`ChunkDone` with
    its error (a plugin's ``SystemExit`` too: it fails the chunk, not the run)."""
    from ..runner import ModelUnavailable, describe_error

    done = ChunkDone(case, chunk)
    try:
        done.output = case.test.run_chunk(env, case, chunk)
    except KeyboardInterrupt:
        raise
    except ModelUnavailable as exc:
        done.error, done.error_kind = str(exc), exc.kind
    except BaseException as exc:
        done.error, done.error_kind, done.traceback = describe_error(exc)
    return done


class LocalExecutor:
    """Runs chunks in this process, in plan order."""

    def __init__(self, env: Any):
        self.env = env

    def run(self, work: list[tuple["Case", "Chunk"]],
            wanted: Callable[["Case"], bool]) -> Iterator[ChunkDone]:
        for case, chunk in work:
            if wanted(case):
                yield run_one(self.env, case, chunk)

    def close(self) -> None:
        pass
