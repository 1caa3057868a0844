"""Evaluation tests: each model on the test's images, clean and under one or more attacks
(each attack setting of a sweep, and with several attacks the worst case per image)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import ModelError
from ..records import ChunkRecord, ResultRow, baseline_label, join_settings, ledger_frame
from ..base import registered_name
from . import ChunkOutput, Env, TestKind
from .ledger import case_evaluation, metric_rows, result_columns

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from ..attack import Attack
    from ..data import DataSource
    from ..plan import Case, Chunk, Plan
    from ..suite import TestConfig

#: the setting of the per-image worst case over a test's attacks
WORST_CASE = "worst-case"


class EvaluationTest(TestKind):
    kind = "evaluation"

    def __init__(self, plan: "Plan", index: int, config: "TestConfig"):
        super().__init__(plan, index, config)
        from ..suite import metric_specs

        built = plan.built
        attacks: list[tuple[str, "Attack"]] = []
        if ("tests", index, "attack") in built:
            attacks.append(("", built[("tests", index, "attack")]))
        j = 0
        while ("tests", index, "attack", j) in built:   # several attacks: named settings
            attack = built[("tests", index, "attack", j)]
            attacks.append((registered_name(attack), attack))
            j += 1
        seen: dict[str, int] = {}
        named = []
        for label, attack in attacks:   # two attacks of one plugin: number them
            seen[label] = seen.get(label, 0) + 1
            named.append((label if seen[label] == 1 else f"{label}#{seen[label]}", attack))
        #: (setting label, attack variant) for every setting the test runs
        self.variants: list[tuple[str, "Attack"]] = [
            (baseline_label(label, vlabel), variant)
            for label, attack in named for vlabel, variant in attack.variants()]
        self.attacks = [a for _, a in named]
        self.worst_case = len(named) > 1
        self.metrics = [(spec.use, built[("tests", index, "metrics", j)])
                        for j, spec in enumerate(metric_specs(config))]

    def distortion_over(self, setting: str) -> str:
        """Which images an attack setting's distortions are averaged over."""
        for label, variant in self.variants:
            if label == setting:
                return type(variant).distortion_over
        return "success"

    def batch_size(self, data: "DataSource") -> int:
        from ..plan import DEFAULT_CHUNK

        shape = tuple(data.input_shape) if len(data) else (1,)
        sizes = [a.batch_size_for(shape) for a in self.attacks]
        sizes = [s for s in sizes if s]
        return max(sizes) if sizes else DEFAULT_CHUNK

    def settings(self) -> list[str]:
        attack_settings = [label for label, _ in self.variants] or [""]
        if self.worst_case:
            attack_settings.append(WORST_CASE)
        out = []
        for setting in attack_settings:
            for _, metric in self.metrics:
                out += [join_settings(setting, mlabel) for mlabel, _ in metric.variants()]
        return list(dict.fromkeys(out))

    def metric_names(self) -> list[str]:
        return [name for name, _ in self.metrics]

    def higher_is_better(self, metric: str) -> bool | None:
        return next((m.higher_is_better for name, m in self.metrics if name == metric), None)

    # ------------------------------------------------------------------ running

    def run_chunk(self, env: Env, case: "Case", chunk: "Chunk") -> ChunkOutput:
        import torch

        from ..metric import Evaluation

        model = env.model(case.model)
        data = env.data(self)
        self.check_fit(case.model, model, data)
        for attack in self.attacks:
            if attack.needs_gradients and not model.differentiable:
                raise ModelError(f"attack {registered_name(attack)!r} needs gradients, and model "
                                 f"{case.model!r} gives none",
                                 hint="use a gradient-free attack for it")
        record = ChunkRecord(case.key, chunk.index, chunk.start, chunk.stop)
        out = ChunkOutput(record, ledger_frame([]))
        batch = _one_batch(data, chunk, model.device)
        if batch is None:
            return out
        x = batch.x.to(model.device, non_blocking=True)
        y = batch.y.to(model.device, non_blocking=True)
        clean_pred = model.predict(x)
        common = {"test": self.name, "model": case.model, "chunk": chunk.index,
                  "index": batch.index.numpy(), "image": [data.image_id(int(i))
                                                          for i in batch.index],
                  "label": batch.y.numpy(), "clean_pred": clean_pred.cpu().numpy()}
        frames = []
        partial_metrics = [(name, m) for name, m in self.metrics if not m.from_ledger]
        if not self.variants:
            frames.append({**common, "setting": "", "attack": ""})
            ev = Evaluation(model, x, y, clean_pred)
            record.partials += _partials("", partial_metrics, ev)
        results = []
        for label, variant in self.variants:
            res = variant(model, x, y, env.context(chunk.start))
            adv_pred = model.predict(res.x_adv)
            frames.append({**common, **result_columns(res, adv_pred), "setting": label,
                           "attack": registered_name(variant)})
            results.append((label, res, adv_pred))
            ev = Evaluation(model, x, y, clean_pred, res, adv_pred)
            record.partials += _partials(label, partial_metrics, ev)
            record.seconds += float(res.seconds)
            if self.config.pictures and chunk.index == 0:
                out.files.update(self._pictures(case.model, data, batch, x, res.x_adv,
                                                clean_pred, adv_pred, label))
        if self.worst_case and results:
            frames.append({**common, **_worst_case(results), "setting": WORST_CASE,
                           "attack": WORST_CASE})
        out.ledger = ledger_frame(frames)
        record.files = list(out.files)
        effective = [getattr(v, "effective_batch_size", None) for _, v in self.variants]
        if any(effective):
            record.info["batch_size"] = min(e for e in effective if e)
        return out

    def _pictures(self, mid: str, data: Any, batch: Any, x: "torch.Tensor",
                  x_adv: "torch.Tensor", clean_pred: "torch.Tensor", adv_pred: "torch.Tensor",
                  label: str) -> dict[str, bytes]:
        from ..figures import examples_grid

        k = min(self.config.pictures, len(x))
        title = f"{self.name} on {mid}" + (f" ({label})" if label else "")
        png = examples_grid(x[:k], x_adv[:k], batch.y[:k], clean_pred[:k], adv_pred[:k],
                            data.classes, title)
        suffix = f"-{label}" if label else ""
        return {f"figures/{self.name}/{mid}/examples{suffix}.png": png}

    # ------------------------------------------------------------------ summarizing

    def case_notes(self, case: "Case", ledger: "pd.DataFrame") -> list[str]:
        """Where an attack's success rate is below 100%: how many images failed, why (the
        attack's failure codes) and what to change (its advice)."""
        return [note for label, variant in self.variants
                if type(variant).distortion_over == "success"
                for note in [failure_note(self.name, case.model, label, variant,
                                          ledger[ledger["setting"] == label])] if note]

    def figures(self, ledger: "pd.DataFrame", rows: list[ResultRow]) -> dict[str, bytes]:
        from ..report import plots

        out = {}
        # attacks with a goal (noise has none: its distortion is the noise's size)
        goal = [label for label, v in self.variants if type(v).distortion_over == "success"]
        goal += [WORST_CASE] if self.worst_case else []
        attacked = ledger[ledger["setting"].isin(goal) & (ledger["attack"] != "")]
        if attacked.empty:
            return out
        if any(getattr(a, "minimum_norm", False) for a in self.attacks):
            curves = attacked[attacked["setting"] == (WORST_CASE if self.worst_case
                                                      else attacked["setting"])]
            png = plots.robustness_curves(self.name, curves)
            if png:
                out["robustness-curves.png"] = png
        png = plots.distortion_boxes(self.name, attacked)
        if png:
            out["distortions.png"] = png
        return out

    def pairable(self, metric: str) -> bool:
        from ..metric import Metric

        return any(name == metric and m.from_ledger and type(m).values is not Metric.values
                   for name, m in self.metrics)

    def per_image(self, ledger: "pd.DataFrame", model: str, metric: str,
                  param: str) -> "pd.Series | None":
        import pandas as pd

        settings = ([label for label, _ in self.variants] or [""]) \
            + ([WORST_CASE] if self.worst_case else [])
        for name, m in self.metrics:
            if name != metric or not m.from_ledger:
                continue
            for setting in settings:
                for mlabel, variant in m.variants():
                    if join_settings(setting, mlabel) != param:
                        continue
                    sub = ledger[(ledger["model"] == model) & (ledger["setting"] == setting)]
                    sub = sub.sort_values("index", kind="stable")
                    ev = case_evaluation(sub, with_attack=setting != "" or bool(self.variants),
                                         distortion_over=self.distortion_over(setting))
                    values = variant.values(ev)
                    if values is None:
                        return None
                    return pd.Series(values.double().cpu().numpy(), index=sub["image"].to_numpy())
        return None

    def aggregate(self, case: "Case", ledger: "pd.DataFrame", chunks: list[ChunkRecord],
                  seed: int) -> list[ResultRow]:
        rows: list[ResultRow] = []
        settings = ([label for label, _ in self.variants] or [""]) \
            + ([WORST_CASE] if self.worst_case else [])
        for setting in settings:
            sub = ledger[ledger["setting"] == setting]
            ev = case_evaluation(sub, with_attack=setting != "" or bool(self.variants),
                                 distortion_over=self.distortion_over(setting))
            partials = [p for ch in chunks for p in ch.partials if p["setting"] == setting]
            rows += metric_rows(self.name, case.model, setting, self.metrics, ev, partials, seed)
        return rows


def _one_batch(data: Any, chunk: "Chunk", device: Any):
    """The chunk's images as one batch (None for an empty chunk)."""
    if chunk.images <= 0:
        return None
    pin = getattr(device, "type", "cpu") == "cuda"
    return next(iter(data.batches(chunk.images, chunk.start, chunk.stop, pin_memory=pin)))


def _partials(setting: str, metrics: list[tuple[str, Any]], ev: Any) -> list[dict[str, Any]]:
    """Per-chunk values of metrics that look at the images themselves."""
    from ..base import blame

    out = []
    for name, metric in metrics:
        for mlabel, m in metric.variants():
            with blame(m, "computing it"):
                value = m.compute(ev)
                count = m.count(ev) if value is not None else None
            if value is None:
                continue
            out.append({"setting": setting, "metric": name, "param": mlabel,
                        "value": float(value), "n": int(len(ev.y) if count is None else count)})
    return out


def _worst_case(results: list[tuple[str, Any, Any]]) -> dict[str, Any]:
    """Per image over several attacks: a success if any attack succeeded, with the smallest
    successful distortion (and that attack's prediction and norms); else the first attack's
    outcome."""
    import numpy as np

    cols = [result_columns(res, pred) for _, res, pred in results]
    n = len(cols[0]["success"])
    chosen = np.zeros(n, dtype=np.int64)
    best = np.full(n, np.inf)
    for k, c in enumerate(cols):
        better = c["success"] & (c["distortion"] < best)
        chosen[better] = k
        best[better] = c["distortion"][better]
    out: dict[str, Any] = {}
    for key in cols[0]:
        stacked = np.stack([np.asarray(c[key]) for c in cols])
        out[key] = stacked[chosen, np.arange(n)]
    for key in ("grad_evals", "forward_evals", "seconds"):   # costs add up over attacks
        out[key] = np.sum([np.asarray(c[key]) for c in cols], axis=0)
    out["success"] = np.any([c["success"] for c in cols], axis=0)
    out["already"] = np.any([c["already"] for c in cols], axis=0)
    return out


def failure_note(test: str, model: str, setting: str, attack: Any,
                 rows: "pd.DataFrame") -> str | None:
    """One sentence on the images an attack did not bring to its goal, by cause, with the
    attack's advice for each (None when every image succeeded)."""
    if rows.empty:
        return None
    failed = rows[~rows["success"]]
    if failed.empty:
        return None
    n, k = len(rows), len(failed)
    where = f"{registered_name(attack)} on {model}" + (f" ({setting})" if setting else "")
    counts = failed["failure"].replace("", "unknown").value_counts()
    parts = []
    for code, count in counts.items():
        advice = type(attack).failure_advice.get(code)
        if code == "unknown":
            parts.append(f"{count} without a reason given by the attack")
        else:
            parts.append(f"{count} {code}" + (f" ({advice})" if advice else ""))
    return (f"{where}: success {100 * (n - k) / n:.3g}%, {k} of {n} images did not reach "
            f"the goal: " + "; ".join(parts))
