"""Transfer tests: adversarial examples made for each source model, fed to every target model
(the paper's Tables 2-4), with amplified versions of the same perturbations and a model-free
baseline (noise) of about the same size.

A case is one source model (or the baseline); each of its chunks makes the examples for its
images, saves them (``artifacts/<test>/<source>/<start>-<stop>.npz``, the portable format of
:mod:`harness.transfer`) and feeds them to every target. Ledger rows are per target model,
setting (``made_for=<source>[,amplified=<d>]`` or the baseline's setting) and image; their
``success`` is the attack's success on its source.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from .. import transfer as fmt
from ..errors import HarnessError, ModelError
from ..records import (ChunkRecord, ResultRow, baseline_label, ledger_frame, parse_label,
                       transfer_label)
from ..suite import BASELINE
from ..base import registered_name
from . import ChunkOutput, Env, TestKind
from .evaluation import _one_batch
from .ledger import result_columns

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from ..data import DataSource
    from ..plan import Case, Chunk, Plan
    from ..suite import TestConfig


class TransferTest(TestKind):
    kind = "transfer"

    def __init__(self, plan: "Plan", index: int, config: "TestConfig"):
        super().__init__(plan, index, config)
        self.attack = plan.built[("tests", index, "attack")]
        self.baseline = plan.built.get(("tests", index, "baseline"))
        self.targets = config.targets(list(plan.suite.models))
        self.amplify = list(config.amplify or [])

    def case_models(self) -> list[str]:
        sources = self.plan.suite.test_models(self.config)
        return sources + ([BASELINE] if self.baseline is not None else [])

    def models_of_case(self, mid: str) -> list[str]:
        if mid == BASELINE:
            return list(self.targets)
        return [mid] + [t for t in self.targets if t != mid]

    def cost_per_image(self, mid: str) -> float:
        feeds = len(self.targets) * (1 + len(self.amplify)) * 0.05
        return feeds if mid == BASELINE else 1.0 + feeds

    def batch_size(self, data: "DataSource") -> int:
        from ..plan import DEFAULT_CHUNK

        shape = tuple(data.input_shape) if len(data) else (1,)
        return self.attack.batch_size_for(shape) or DEFAULT_CHUNK

    def settings(self) -> list[str]:
        out = []
        for mid in self.plan.suite.test_models(self.config):
            out.append(transfer_label(mid))
            out += [transfer_label(mid, a) for a in self.amplify]
        if self.baseline is not None:
            out += [baseline_label(registered_name(self.baseline), label)
                    for label, _ in self.baseline.variants()]
        return out

    def metric_names(self) -> list[str]:
        return ["adv_error", "mean_distortion", "success_rate"]

    def higher_is_better(self, metric: str) -> bool | None:
        return {"adv_error": False, "mean_distortion": True, "success_rate": False}.get(metric)

    # ------------------------------------------------------------------ running

    def run_chunk(self, env: Env, case: "Case", chunk: "Chunk") -> ChunkOutput:
        import torch

        data = env.data(self)
        record = ChunkRecord(case.key, chunk.index, chunk.start, chunk.stop)
        out = ChunkOutput(record, ledger_frame([]))
        batch = _one_batch(data, chunk, torch.device("cpu"))
        if batch is None:
            return out
        x, y = batch.x, batch.y
        common = {"test": self.name, "chunk": chunk.index, "index": batch.index.numpy(),
                  "image": [data.image_id(int(i)) for i in batch.index],
                  "label": y.numpy()}
        if case.model == BASELINE:
            examples = self._baseline_examples(env, data, x, y, chunk)
            source = None
        else:
            source = env.model(case.model)
            self.check_fit(case.model, source, data)
            examples = self._source_examples(env, case, chunk, data, source, x, y, out)
        frames = []
        failures = []
        fed = self.models_of_case(case.model)
        for tid in fed:
            try:
                target = env.model(tid)
                self.check_fit(tid, target, data)
            except HarnessError as exc:
                failures.append(str(exc))
                continue
            clean = target.predict(x.to(target.device)).cpu().numpy()
            for label, x_rows, cols in examples:
                pred = target.predict(x_rows.to(target.device)).cpu().numpy()
                frames.append({**common, **cols, "model": tid, "setting": label,
                               "attack": registered_name(self.attack) if source is not None
                               else registered_name(self.baseline),
                               "clean_pred": clean, "adv_pred": pred})
        out.ledger = ledger_frame(frames)
        record.files = list(out.files)
        if failures:
            out.error = "; ".join(dict.fromkeys(failures))
        return out

    def _source_examples(self, env: Env, case: "Case", chunk: "Chunk", data: "DataSource",
                         source: Any, x: "torch.Tensor", y: "torch.Tensor",
                         out: ChunkOutput) -> list[tuple[str, "torch.Tensor", dict[str, Any]]]:
        """The examples made for the source (saved, or reused from an earlier run), and their
        amplified versions: ``[(setting, x_adv on the CPU, ledger columns)]``."""
        import numpy as np
        import torch

        if self.attack.needs_gradients and not source.differentiable:
            raise ModelError(f"attack {registered_name(self.attack)!r} needs gradients, and model "
                             f"{case.model!r} gives none",
                             hint="make the examples for a differentiable model")
        wanted = self._spec(case.model, data)
        saved = None
        if env.reuse is not None:
            saved = fmt.find_reusable(env.reuse, self.name, case.model, wanted,
                                      chunk.start, chunk.stop)
        if saved is not None and tuple(saved["x_adv"].shape) != tuple(x.shape):
            raise HarnessError(f"{env.reuse}: the saved examples of {self.name} x "
                               f"{case.model} have shape {list(saved['x_adv'].shape)}, not the "
                               f"data's {list(x.shape)}", hint="run without --reuse")
        if saved is not None:
            x_adv = torch.from_numpy(saved["x_adv"]).float()
            success = torch.from_numpy(saved["success"])
            target = torch.from_numpy(saved["target"]) if "target" in saved else None
            cols = {"success": success.numpy(), "target": (target.numpy() if target is not None
                                                           else np.full(len(x), -1))}
            out.record.notes.append(f"examples for {case.model} reused from {env.reuse}")
        else:
            dev = source.device
            res = self.attack(source, x.to(dev), y.to(dev), env.context(chunk.start))
            x_adv = res.x_adv.detach().cpu()
            success, target = res.success.cpu(), (res.target.cpu() if res.target is not None
                                                  else None)
            cols = result_columns(res, torch.full_like(res.success, -1, dtype=torch.long))
            cols.pop("adv_pred")
            out.record.seconds += float(res.seconds)
            if self.config.pictures and chunk.index == 0:
                k = min(self.config.pictures, len(x))
                from ..figures import examples_grid

                clean = source.predict(x[:k].to(dev))
                adv = source.predict(res.x_adv[:k])
                out.files[f"figures/{self.name}/{case.model}/examples.png"] = examples_grid(
                    x[:k], res.x_adv[:k], y[:k], clean, adv, data.classes,
                    f"{self.name} on {case.model}")
        base = f"artifacts/{self.name}/{case.model}"
        out.files[f"{base}/{chunk.start}-{chunk.stop}.npz"] = fmt.pack(x, x_adv, y, success,
                                                                        target)
        if chunk.index == 0:
            import json

            out.files[f"{base}.json"] = (json.dumps({**wanted, "chunked": True}, indent=2,
                                                    default=str) + "\n").encode()
        dist = fmt.distortion_of(x, x_adv).double().numpy()
        plain = {**cols, "distortion": dist, "l2": _norm(x, x_adv, 2),
                 "linf": _norm(x, x_adv, math.inf)}
        rows = [(transfer_label(case.model), x_adv, plain)]
        for level in self.amplify:
            amplified = fmt.amplify(x, x_adv, level)
            rows.append((transfer_label(case.model, level), amplified,
                         {**cols, "distortion": fmt.distortion_of(x, amplified).double().numpy(),
                          "l2": _norm(x, amplified, 2), "linf": _norm(x, amplified, math.inf),
                          "grad_evals": 0, "forward_evals": 0, "seconds": 0.0}))
        return rows

    def _baseline_examples(self, env: Env, data: "DataSource", x: "torch.Tensor",
                           y: "torch.Tensor", chunk: "Chunk"
                           ) -> list[tuple[str, "torch.Tensor", dict[str, Any]]]:
        """The baseline's examples, one set per setting, made on the CPU with no model."""
        stand_in = _stand_in_model(data)
        rows = []
        for label, variant in self.baseline.variants():
            res = variant(stand_in, x, y, env.context(chunk.start))
            x_adv = res.x_adv.detach().cpu()
            rows.append((baseline_label(registered_name(self.baseline), label), x_adv,
                         {"distortion": fmt.distortion_of(x, x_adv).double().numpy(),
                          "l2": _norm(x, x_adv, 2), "linf": _norm(x, x_adv, math.inf)}))
        return rows

    def _spec(self, mid: str, data: "DataSource") -> dict[str, Any]:
        return fmt.metadata(
            suite=self.plan.suite.name, test=self.name, model=mid,
            model_spec=dict(self.plan.suite.models[mid]), attack_spec=dict(self.config.attack),
            data_spec=dict(self.data_spec) if self.data_spec else None,
            data_fingerprint=data.fingerprint(), seed=self.plan.seed, n=len(data))

    # ------------------------------------------------------------------ summarizing

    def figures(self, ledger: "pd.DataFrame", rows: list[ResultRow]) -> dict[str, bytes]:
        from ..report import plots

        values = {(r.model, r.param): r.value for r in rows if r.metric == "adv_error"}
        labels = list(dict.fromkeys(r.param for r in rows if r.metric == "adv_error"))
        matrix = [[values.get((t, label)) for t in self.targets] for label in labels]
        png = plots.transfer_heatmap(self.name, labels, self.targets, matrix, "adv_error")
        return {"transfer-matrix.png": png} if png else {}

    def pairable(self, metric: str) -> bool:
        return metric in ("adv_error", "success_rate", "mean_distortion")

    def per_image(self, ledger: "pd.DataFrame", model: str, metric: str,
                  param: str) -> "pd.Series | None":
        import numpy as np
        import pandas as pd

        setting = parse_label(param)
        if metric == "adv_error":
            fed = ledger[(ledger["model"] == model) & (ledger["setting"] == param)]
            values = (fed["adv_pred"] != fed["label"]).to_numpy(dtype=np.float64)
        elif metric == "success_rate":
            fed = ledger[(ledger["model"] == model) & (ledger["setting"] == param)]
            values = fed["success"].to_numpy(dtype=np.float64)
        elif metric == "mean_distortion":
            fed = ledger[(ledger["model"] == model) & (ledger["setting"] == param)]
            values = fed["distortion"].to_numpy(dtype=np.float64)
            if not setting.is_baseline:
                values = np.where(fed["success"].to_numpy(), values, np.nan)
        else:
            return None
        return pd.Series(values, index=fed["image"].to_numpy())

    def aggregate(self, case: "Case", ledger: "pd.DataFrame", chunks: list[ChunkRecord],
                  seed: int) -> list[ResultRow]:
        from .ledger import rate_row, mean_row

        rows: list[ResultRow] = []
        labels = list(dict.fromkeys(ledger["setting"].tolist()))
        for label in labels:
            sub = ledger[ledger["setting"] == label]
            setting = parse_label(label)
            if not setting.is_baseline:
                own = sub[sub["model"] == case.model]
                if setting.amplified is None:
                    rows.append(rate_row(self.name, case.model, "success_rate", label,
                                         own["success"].to_numpy()))
                ok = own[own["success"]]
                rows.append(mean_row(self.name, case.model, "mean_distortion", label,
                                     ok["distortion"].to_numpy(), seed))
            for tid in self.targets:
                fed = sub[sub["model"] == tid]
                if not len(fed):
                    continue
                rows.append(rate_row(self.name, tid, "adv_error", label,
                                     (fed["adv_pred"] != fed["label"]).to_numpy()))
                if setting.is_baseline:   # noise has no success: its size over all images
                    rows.append(mean_row(self.name, tid, "mean_distortion", label,
                                         fed["distortion"].to_numpy(), seed))
        return rows


def _norm(x: "torch.Tensor", x_adv: "torch.Tensor", p: float) -> Any:
    return (x_adv - x).flatten(1).norm(p=p, dim=1).double().numpy()


def _stand_in_model(data: "DataSource") -> Any:
    """A stand-in model for a baseline that needs none (its predictions are ignored)."""
    import torch

    from ..model import Model

    n = data.num_classes
    return Model(forward=lambda x: torch.zeros(len(x), n, device=x.device),
                 input_shape=data.input_shape, num_classes=n, device="cpu",
                 differentiable=False, name="baseline")
