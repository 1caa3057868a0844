"""Resuming a run in its folder (``harness run SUITE --resume DIR``): which chunks it finished.

A run saves every chunk as it finishes (its ledger rows, then its record), so a run stopped
at any moment, by Ctrl-C, SIGTERM or SIGKILL, keeps every chunk that finished. Resuming runs
only the others, and the numbers are those of a run in one go. A run is resumed only with
the suite, seed, device, limit and shard it started with, and over the same data (the same
chunks), since its numbers would otherwise not belong with the new ones.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from .errors import HarnessError
from .records import ChunkRecord

if TYPE_CHECKING:
    from .plan import Plan

AGAIN = "run the suite afresh (--out NEW_FOLDER)"


def load_done(store: Any, plan: "Plan", seed: int, device: Any, limit: int | None,
              shard: tuple[int, int] | None = None) -> dict[str, ChunkRecord]:
    """The chunks the run in ``store`` finished without error, by chunk id; refuses (one
    line) a folder whose run cannot be continued with these settings."""
    from .runner import suite_digest

    where = store.path
    suite = plan.suite
    if store.started_only():   # stopped before it saved anything but the suite
        if os.path.lexists(store.path / "suite.yaml") and store.suite_text() != suite.text:
            raise HarnessError(f"{where} holds a run of another suite, or of this one before it "
                               "changed; its results cannot be continued", hint=AGAIN)
        return {}
    summary = store.read_summary()
    if summary.suite.sha256 != suite_digest(suite):
        raise HarnessError(f"{where} holds a run of another suite, or of this one before it "
                           "changed; its results cannot be continued", hint=AGAIN)
    before = {"seed": summary.seed, "device": summary.device,
              "limit": summary.options.get("limit"),
              "shard": "/".join(map(str, summary.shard)) if summary.shard else None}
    now = {"seed": seed, "device": str(device), "limit": limit,
           "shard": "/".join(map(str, shard)) if shard else None}
    for key in before:
        if before[key] != now[key]:
            raise HarnessError(f"{where} was run with {key} {before[key]}, not {now[key]}; "
                               "resume it with the same settings", hint=AGAIN)
    records = store.chunk_records()
    if summary.plan is None:
        if summary.cases or records:
            raise HarnessError(f"{where} was written by an older version of the harness and "
                               "cannot be resumed", hint=AGAIN)
        return {}
    check_same_chunks(summary.plan, plan, where)
    done = {}
    for (order, k), rec in records.items():
        if order >= len(plan.cases) or k >= len(plan.cases[order].chunks):
            raise HarnessError(f"{where} holds chunk {k} of case {order}, which the suite does "
                               "not have", hint=AGAIN)
        chunk = plan.cases[order].chunks[k]
        if rec.case != chunk.case or (rec.start, rec.stop) != (chunk.start, chunk.stop):
            raise HarnessError(f"{where}: chunk {k} of {chunk.case} covered images "
                               f"{rec.start} to {rec.stop}, not {chunk.start} to {chunk.stop}",
                               hint=AGAIN)
        if rec.info.get("error"):
            continue   # ran, but part of it failed: run it again
        done[chunk.id] = rec
    return done


def check_same_chunks(saved: list[Any], plan: "Plan", where: Any) -> None:
    """The plan's chunking must be the one the folder's run had (the same data)."""
    now = [(c.test.name, c.model, c.images, [[ch.start, ch.stop] for ch in c.chunks])
           for c in plan.cases]
    before = [(p.test, p.model, p.images, [list(x) for x in p.chunks]) for p in saved]
    if now != before:
        first = next((b for b, n in zip(before, now) if b != n), None)
        what = (f"case {first[0]} x {first[1]} had {first[2]} images in {len(first[3])} "
                f"chunk(s)" if first else "its cases differ")
        raise HarnessError(f"{where} was run over other data or another chunking ({what})",
                           hint=AGAIN)
