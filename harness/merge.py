"""Joining the run folders of a suite's shards (``harness run SUITE --shard K/N``, one per K)
into one run folder (``harness merge``): the shards' chunks (ledger rows and records), figures
and saved examples are copied, and every aggregate (means, medians, intervals, figures,
gates) is computed again from the joined ledger, so the numbers are exactly those of a run
in one go. No model or data is needed."""

from __future__ import annotations

from typing import Any

from .errors import HarnessError
from .records import ChunkRecord

HINT = "merge the run folders that 'harness run SUITE --shard K/N' wrote, one per K"


def merge_runs(stores: list[Any], registry: Any, out: Any, command: list[str] | None = None,
               baseline: Any = None) -> tuple[Any, int]:
    """Combine the shards' run folders ``stores`` into the run folder ``out``; the gates are
    judged on the whole. Returns the result and the exit code."""
    from .plan import Plan
    from .resume import check_same_chunks
    from .runner import ModelInfo, RunResult, final_save, plugins_used, saver, summarize
    from .suite import parse_suite

    if not stores:
        raise HarnessError("give the run folders of the shards to merge")
    summaries = []
    for store in stores:
        store.check()
        summaries.append(store.read_summary())
    first, s0 = stores[0], summaries[0]
    shards: dict[int, Any] = {}
    n = None
    for store, summary in zip(stores, summaries):
        if not summary.shard:
            raise HarnessError(f"{store.path} is not a shard (it ran without --shard)", hint=HINT)
        k, m = summary.shard
        n = n or m
        if m != n:
            raise HarnessError(f"{store.path} is shard {k}/{m}, and {first.path} one of {n}: "
                               "shards of different splits", hint=HINT)
        if k in shards:
            raise HarnessError(f"shard {k}/{n} given twice: {shards[k].path} and {store.path}",
                               hint=HINT)
        if summary.suite.sha256 != s0.suite.sha256 or summary.seed != s0.seed \
                or summary.device != s0.device \
                or summary.options.get("limit") != s0.options.get("limit"):
            raise HarnessError(f"{store.path} is a shard of another run than {first.path} "
                               "(suite, seed, device or limit differ)", hint=HINT)
        shards[k] = store
    missing = [f"{k}/{n}" for k in range(1, n + 1) if k not in shards]
    if missing:
        raise HarnessError(f"shard(s) {', '.join(missing)} missing", hint=f"run 'harness run "
                           f"SUITE --shard {missing[0]}' and merge all {n} folders")
    if any(s.plan is None for s in summaries):
        old = next(st for st, s in zip(stores, summaries) if s.plan is None)
        raise HarnessError(f"{old.path} was written by an older version of the harness, "
                           "whose shards cannot be merged by this one",
                           hint="run the shards again with this version")
    suite = parse_suite(first.suite_text(), s0.suite.file, registry)
    plan = Plan(suite, registry, s0.seed)
    plan.from_summary(s0.plan)
    for store, summary in zip(stores, summaries):
        check_same_chunks(summary.plan, plan, store.path)
    # every chunk of the plan must be in exactly one shard's folder
    owner: dict[tuple[int, int], Any] = {}
    records: dict[tuple[int, int], ChunkRecord] = {}
    for store in stores:
        for key, rec in store.chunk_records().items():
            if rec.info.get("error"):
                continue
            if key in owner:
                raise HarnessError(f"chunk {key[1]} of case {key[0]} is in two shards: "
                                   f"{owner[key].path} and {store.path}", hint=HINT)
            owner[key] = store
            records[key] = rec
    absent = [f"{c.test.name} x {c.model} (chunk {ch.index})" for c in plan.cases
              for ch in c.chunks if (c.order, ch.index) not in records]
    if absent:
        raise HarnessError(f"{len(absent)} chunk(s) are in no shard's folder (first: "
                           f"{absent[0]}): a shard was interrupted or failed",
                           hint="finish it with 'harness run SUITE --shard K/N --resume DIR', "
                                "then merge again")
    for store in stores:   # merge copies regular files only: refuse links before writing
        for sub in ("figures", "artifacts", store.LEDGER, store.CHUNKS):
            store.check_tree(sub)
    if baseline is not None:
        baseline.check()
    out.create()
    try:
        out.write_suite(suite.text)
        for store in stores:
            for sub in ("figures", "artifacts", store.LEDGER, store.CHUNKS):
                for path in store.check_tree(sub):
                    out.write_bytes(path.relative_to(store.path).as_posix(), path.read_bytes())
        result = RunResult(plan, s0.seed, s0.device, min(s.started for s in summaries))
        result.finished = max((s.finished or "") for s in summaries) or None
        result.seconds = max(float(s.seconds) for s in summaries)
        by_case = {}
        for summary in summaries:
            for c in summary.cases:
                by_case.setdefault((c.test, c.model), []).append(c)
        for case in plan.cases:
            done = {plan.cases[o].chunks[k].id: r for (o, k), r in records.items()
                    if o == case.order}
            parts = by_case.get((case.test.name, case.model), [])
            errors = [p for p in parts if p.status == "error"]
            outcome = summarize(plan, case, out, done, case.chunks, result)
            outcome.seconds = sum(float(p.seconds) for p in parts)
            if errors:
                outcome.status, outcome.error = "error", errors[0].error
                outcome.error_kind = errors[0].error_kind
        models: dict[str, ModelInfo] = {}
        for summary in summaries:
            for m in summary.models:
                if m.id not in models or models[m.id].status != "ok":
                    models[m.id] = ModelInfo(**{k: getattr(m, k) for k in
                                                ModelInfo.__dataclass_fields__})
        result.models = {mid: models[mid] for mid in [*suite.models, *models] if mid in models}
        options = dict(s0.options)
        options.update(resumed=0, baseline=str(baseline.path) if baseline is not None else None)
        static = {
            "suite": s0.suite.model_dump(), "command": command or [], "options": options,
            "merged": [{"path": str(shards[k].path), "shard": [k, n],
                        "seconds": summaries[stores.index(shards[k])].seconds}
                       for k in sorted(shards)],
            "versions": s0.versions, "device_info": s0.device_info,
            "plugins": plugins_used(registry, plan.built),
        }
        return result, final_save(saver(plan, out, static, baseline), result)
    finally:
        out.unlock()
