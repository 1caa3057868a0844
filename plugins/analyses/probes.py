"""Unit probes: images that most activate a unit versus a random direction (Section 3).

Szegedy et al. (2013), Section 3, look at a layer ``phi`` of a trained net through the
held-out images that maximize ``<phi(x), e_i>`` (a single unit, a natural basis vector) and
those that maximize ``<phi(x), v>`` (a random direction ``v``), and find both kinds of image
sets equally "semantically coherent": the semantic information lies in the space of
activations, not in its individual coordinates. The paper shows only image grids.

``unit-probe`` draws those grids and puts numbers on them, per row (one unit or direction,
its top-k images):

* ``purity``: the share of the top-k images carrying the most common label among them;
* ``cosine``: the mean pairwise cosine similarity of their activations ``phi(x)``;
* ``pixel_cosine``: the same on the raw pixels (how alike the images themselves look).

and per kind (``units``, ``random``, and ``chance``: random sets of k images, the level
with no selection at all) the mean and the standard deviation of each, so that the claim can
be checked rather than eyeballed.
"""

from __future__ import annotations

import functools
import io
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Callable, ClassVar, Iterator, Sequence, Union

from pydantic import AfterValidator, BeforeValidator, Discriminator, Tag

import harness
from harness import Analysis, AnalysisResult, Context, Data, Field, Model, ParamError, hookimpl

if TYPE_CHECKING:
    import torch

#: how many random k-image sets estimate the chance level of each number
CHANCE_SETS = 256
#: the figure's layout, inches at 100 dpi: one image tile, the row labels left of each
#: panel, the gap between the panels, the outer margin, the title and the panel headings
TILE_INCHES = 0.5
LABEL_INCHES = 1.25
GAP_INCHES = 0.3
MARGIN_INCHES = 0.15
TITLE_INCHES = 0.45
HEADING_INCHES = 0.3


@dataclass
class ProbeSets:
    """What :meth:`UnitProbe.probe` finds. Rows are the probed units, then the random
    directions; tensors are on the model's device.

    ``index`` ``[rows, k]``: the top-k images of each row, best first (indices into the
    data); ``scores`` ``[rows, k]``: their <phi(x), direction>; ``ties`` ``[rows]``: whether
    the k-th score equals the next one; ``majority`` ``[rows]``: the most common label;
    ``numbers``: ``purity``, ``cosine``, ``pixel_cosine`` per row; ``chance``: the same for
    random k-image sets; ``directions`` ``[directions, width]``: the random unit vectors.
    """

    layer: str
    width: int
    n_live: int
    units: list[int]
    dead_given: list[int]
    directions: torch.Tensor
    index: torch.Tensor
    scores: torch.Tensor
    ties: torch.Tensor
    majority: torch.Tensor
    numbers: dict[str, torch.Tensor]
    chance: dict[str, torch.Tensor]

    def row_names(self) -> list[str]:
        """``unit=<i>`` and ``random=<j>``, the ``param`` of each row's records."""
        return ([f"unit={u}" for u in self.units]
                + [f"random={j}" for j in range(len(self.directions))])


@dataclass
class _Scan:
    """What one pass over the data keeps (on the model's device): the random directions,
    every coordinate's minimum and maximum, and the running top ``k + 1`` scores (best first)
    and image indices, ``[k + 1, width]`` for the coordinates and ``[k + 1, directions]``
    for the random directions."""

    width: int
    directions: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor
    unit_scores: torch.Tensor
    unit_index: torch.Tensor
    dir_scores: torch.Tensor
    dir_index: torch.Tensor


def _running_top(scores: torch.Tensor | None, index: torch.Tensor | None,
                 batch: torch.Tensor, start: int,
                 keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge the scores of a batch (``[b, columns]``, images ``start...``) into the best
    ``keep`` so far of each column; returns scores and image indices, best first."""
    import torch

    batch_index = torch.arange(start, start + len(batch), device=batch.device)
    batch_index = batch_index.unsqueeze(1).expand_as(batch)
    if scores is not None:
        batch = torch.cat([scores, batch])
        batch_index = torch.cat([index, batch_index])
    best, pos = batch.topk(min(keep, len(batch)), dim=0)
    return best, batch_index.gather(0, pos)


def _no_grad(fn: Callable) -> Callable:
    """``fn`` run under ``torch.no_grad()`` (torch imported when it is called)."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import torch

        with torch.no_grad():
            return fn(*args, **kwargs)

    return wrapper


def _layer_path(value: Any) -> Any:
    """A layer given as a number (``layer: 8``) as its module path, ``"8"``."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _distinct(units: list[int]) -> list[int]:
    if len(set(units)) != len(units):
        raise ValueError(f"lists an index twice: {units}")
    return units


def _as_list(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


#: how many coordinates to probe (drawn at random), or the list of their indices
_Units = Annotated[
    Union[Annotated[int, Field(ge=1), Tag("count")],
          Annotated[list[Annotated[int, Field(ge=0)]], BeforeValidator(_as_list),
                    Field(min_length=1), AfterValidator(_distinct), Tag("list")]],
    Discriminator(lambda v: "list" if isinstance(v, (list, tuple)) else "count")]


class UnitProbe(Analysis):
    """The held-out images that maximize single units of a layer versus random directions
    of it (Szegedy et al. 2013, Section 3), with label purity and activation similarity per
    image set.

    Parameters: ``layer`` the module path whose flattened output is phi(x) (such as ``8``
    or ``features.10``); ``units`` how many coordinates of phi to probe, drawn at random
    (seeded) among the live ones (those not constant over the data), or an explicit list of
    coordinate indices; ``directions`` how many random unit-norm directions to probe; ``top``
    the k images shown and measured per unit or direction (at least 2); ``batch_size``
    images per forward pass.
    """

    needs_data: ClassVar[bool] = True
    needs_module: ClassVar[bool] = True

    seed_name = "unit-probe"

    class Params(harness.Params):
        layer: Annotated[str, BeforeValidator(_layer_path)] = Field(
            min_length=1, description="the module path whose flattened output is phi(x), such "
                                      "as 8 or features.10")
        units: _Units = Field(8, description="how many coordinates of phi to probe, drawn at "
                                             "random among the live ones, or a list of their "
                                             "indices")
        directions: int = Field(8, ge=1, description="how many random unit-norm directions to "
                                                     "probe")
        top: int = Field(8, ge=2, description="the k images shown and measured per unit or "
                                              "direction")
        batch_size: int = Field(1000, ge=1, description="images per forward pass")

    # ------------------------------------------------------------------------- the work

    def features(self, model: Model, x: torch.Tensor, ctx: Context,
                 desc: str) -> Iterator[torch.Tensor]:
        """phi of ``x`` (on any device) batch by batch, ``[b, D]`` on the model's device."""
        with ctx.progress(desc, len(x), "img") as bar:
            for i in range(0, len(x), self.batch_size):
                xb = x[i:i + self.batch_size].to(model.device)
                yield model.features(self.layer, xb).float()
                bar.update(len(xb))

    @_no_grad
    def scan(self, model: Model, x: torch.Tensor, ctx: Context) -> _Scan:
        """One pass over ``x``: the range of every coordinate of phi, and the running top
        k + 1 images of every coordinate and of every random direction. Memory grows with
        the layer's width and k, not with the number of images."""
        import torch

        model.layer(self.layer)  # a clear error naming the layers, before any work
        batches = self.features(model, x, ctx, f"unit-probe: layer {self.layer}")
        first = next(batches)
        width = first.shape[1]
        directions = self.random_directions(width, ctx, model.device)
        keep = self.top + 1
        state = _Scan(width, directions, first.amin(0), first.amax(0),
                      *_running_top(None, None, first, 0, keep),
                      *_running_top(None, None, first @ directions.T, 0, keep))
        start = len(first)
        for phi in batches:
            state.low = torch.minimum(state.low, phi.amin(0))
            state.high = torch.maximum(state.high, phi.amax(0))
            state.unit_scores, state.unit_index = _running_top(
                state.unit_scores, state.unit_index, phi, start, keep)
            state.dir_scores, state.dir_index = _running_top(
                state.dir_scores, state.dir_index, phi @ directions.T, start, keep)
            start += len(phi)
        return state

    def pick_units(self, live: torch.Tensor, ctx: Context) -> tuple[list[int], list[int], int]:
        """The probed coordinates, the explicitly given ones among them that are dead, and
        how many coordinates are live (``live``: a bool mask over the coordinates)."""
        import torch

        width = len(live)
        live_idx = live.nonzero().flatten().cpu()
        n_live = len(live_idx)
        if isinstance(self.units, list):
            bad = [u for u in self.units if u >= width]
            if bad:
                raise ParamError("units", f"unit index {bad[0]} is out of range: layer "
                                          f"{self.layer!r} has {width} units (0..{width - 1})")
            live_set = set(live_idx.tolist())
            return list(self.units), [u for u in self.units if u not in live_set], n_live
        if self.units > n_live:
            raise ParamError("units", f"units={self.units} asks for more units than layer "
                                      f"{self.layer!r} has live ones ({n_live} of {width} vary "
                                      f"over the data)", hint="ask for fewer units")
        order = torch.randperm(n_live, device="cpu",
                               generator=ctx.generator(self.seed_key, "units", self.layer))
        return sorted(live_idx[order[:self.units]].tolist()), [], n_live

    def random_directions(self, width: int, ctx: Context, device: torch.device) -> torch.Tensor:
        """``[directions, width]`` unit vectors, uniform on the sphere (drawn on the CPU)."""
        import torch
        import torch.nn.functional as F

        v = torch.randn(self.directions, width, device="cpu",
                        generator=ctx.generator(self.seed_key, "directions", self.layer))
        return F.normalize(v, dim=1).to(device)

    @_no_grad
    def probe(self, model: Model, data: Data, ctx: Context) -> ProbeSets:
        """The top-k image sets of every probed unit and random direction, with their
        numbers (tensors on the model's device), and the chance level of each number."""
        import torch

        n, k = len(data), self.top
        if n < k:
            raise ParamError("top", f"top={k} is more than the {n} images of the data")
        device = model.device
        scan = self.scan(model, data.x, ctx)
        units, dead_given, n_live = self.pick_units(scan.high > scan.low, ctx)

        # one column per probed direction: the units first, then the random directions
        top_scores = torch.cat([scan.unit_scores[:, units], scan.dir_scores], dim=1)
        top_index = torch.cat([scan.unit_index[:, units], scan.dir_index], dim=1)
        ties = (top_scores[k - 1] == top_scores[k]) if n > k else torch.zeros(
            top_scores.shape[1], dtype=torch.bool, device=device)
        idx = top_index[:k].T.contiguous()  # [rows, k]: each row's top-k images, best first

        chance_idx = torch.multinomial(
            torch.ones(CHANCE_SETS, n, device="cpu"), k, replacement=False,
            generator=ctx.generator(self.seed_key, "chance", self.layer)).to(device)
        # phi again, for the few images the numbers need
        needed = torch.unique(torch.cat([idx.flatten(), chance_idx.flatten()]))
        phi = torch.cat(list(self.features(model, data.x[needed.cpu()], ctx,
                                           f"unit-probe: layer {self.layer}, top sets")))
        row_of = torch.full((n,), -1, dtype=torch.long, device=device)
        row_of[needed] = torch.arange(len(needed), device=device)

        classes = max(data.num_classes, int(data.y.max()) + 1)
        y = data.y.to(device)
        pixels = data.x.flatten(1)
        numbers, chance = {}, {}
        for out, sets in ((numbers, idx), (chance, chance_idx)):
            out["purity"] = label_purity(y[sets], classes)
            out["cosine"] = mean_pairwise_cosine(phi[row_of[sets]])
            out["pixel_cosine"] = mean_pairwise_cosine(pixels[sets.cpu()].to(device))
        return ProbeSets(layer=self.layer, width=scan.width, n_live=n_live, units=units,
                         dead_given=dead_given, directions=scan.directions, index=idx,
                         scores=top_scores[:k].T.contiguous(), ties=ties,
                         majority=torch.mode(y[idx], dim=1).values, numbers=numbers,
                         chance=chance)

    def run(self, model: Model, data: Data | None, ctx: Context) -> AnalysisResult:
        if data is None:
            raise ValueError("unit-probe needs data")
        sets = self.probe(model, data, ctx)
        # everything to the host once
        rows = {m: t.tolist() for m, t in sets.numbers.items()}
        chance = {m: t.tolist() for m, t in sets.chance.items()}
        majority = sets.majority.tolist()
        names = sets.row_names()
        ties = [names[i] for i in sets.ties.nonzero().flatten().tolist()]
        idx = sets.index.cpu()

        res = AnalysisResult()
        for metric, values in rows.items():
            for name, value in zip(names, values):
                res.add(metric, value, param=name)
        nu = len(sets.units)
        kinds = {"units": slice(0, nu), "random": slice(nu, None)}
        summary: dict[tuple[str, str], tuple[float, float, int]] = {}
        for metric, values in rows.items():
            for kind, part in kinds.items():
                summary[metric, kind] = mean_std(values[part])
            summary[metric, "chance"] = mean_std(chance[metric])
        for (metric, kind), (mean, std, _) in summary.items():
            res.add(f"{metric}_mean", mean, param=kind)
            res.add(f"{metric}_std", std, param=kind)

        res.notes += self.notes(data, model, sets, ties, summary)
        n, k, width = len(data), self.top, sets.width
        res.figures["units.png"] = probe_figure(
            data.x[idx], [f"unit {u}" for u in sets.units],
            [f"random {j}" for j in range(self.directions)], rows["purity"], rows["cosine"],
            majority, data.classes,
            title=f"top {k} of {n} images ({data.name or 'data'}) by <phi(x), direction>, "
                  f"phi = layer {self.layer} of {model.name or 'the model'} ({width} units)")
        return res

    def notes(self, data: Data, model: Model, sets: ProbeSets, ties: Sequence[str],
              summary: dict[tuple[str, str], tuple[float, float, int]]) -> list[str]:
        k, width, n_live, units, dead_given = (self.top, sets.width, sets.n_live, sets.units,
                                               sets.dead_given)
        how = (f"drawn at random among its {n_live} live units, those not constant over "
               f"the data" if isinstance(self.units, int)
               else f"given; {n_live} of its units are live, not constant over the data")
        notes = [
            f"Compared {len(units)} single units of layer {self.layer!r} of "
            f"{model.name or 'the model'} ({how}) with {self.directions} random unit-norm "
            f"directions in its {width}-dimensional space: for each, the top {k} of "
            f"{len(data)} images of {data.name or 'the data'} by <phi(x), direction>.",
            f"purity: share of the majority label among the top {k}; cosine: mean pairwise "
            f"cosine of their phi(x); pixel_cosine: the same on raw pixels; chance: "
            f"{CHANCE_SETS} random sets of {k} images. Means ± sample std over the rows.",
        ]
        for metric in ("purity", "cosine"):
            notes.append(reading(metric, summary, k))
        if dead_given:
            notes.append(f"units {list(dead_given)} are dead (constant over the data): their "
                         f"top {k} is an arbitrary pick among equal values.")
        if ties:
            notes.append(f"tie at place {k} ({', '.join(ties)}): the k-th image is one of "
                         f"several with the same score, which one is arbitrary.")
        return notes


# ------------------------------------------------------------------------- the numbers

def label_purity(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per row of ``labels`` ``[rows, k]``: the share of its most common label."""
    import torch.nn.functional as F

    counts = F.one_hot(labels, num_classes).sum(1)
    return counts.amax(1).float() / labels.shape[1]


def mean_pairwise_cosine(feats: torch.Tensor) -> torch.Tensor:
    """Per set of ``feats`` ``[sets, k, D]``: the mean cosine similarity over its
    ``k (k - 1) / 2`` pairs (a zero vector counts as similarity 0 to anything)."""
    import torch.nn.functional as F

    unit = F.normalize(feats.float(), dim=2)
    gram = unit @ unit.transpose(1, 2)
    k = feats.shape[1]
    off_diagonal = gram.sum((1, 2)) - gram.diagonal(dim1=1, dim2=2).sum(1)
    return off_diagonal / (k * (k - 1))


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (0 for a single value) and count."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in values) / (n - 1)) if n > 1 else 0.0
    return mean, std, n


def reading(metric: str, summary: dict[tuple[str, str], tuple[float, float, int]],
            k: int) -> str:
    """One line comparing units and random directions by ``metric``: the means, the
    difference with its standard error, and which way it points."""
    mu, su, nu = summary[metric, "units"]
    mr, sr, nr = summary[metric, "random"]
    mc, _, _ = summary[metric, "chance"]
    diff = mu - mr
    se = math.sqrt(su ** 2 / nu + sr ** 2 / nr)
    head = (f"{metric} of the top {k}: units {mu:.3f} ± {su:.3f}, random directions "
            f"{mr:.3f} ± {sr:.3f} (chance {mc:.3f}); units - random = {diff:+.3f} ± {se:.3f} "
            f"(standard error)")
    if nu < 2 or nr < 2:
        return f"{head}: too few rows to judge the difference."
    if abs(diff) <= 2 * se:
        verdict = ("no clear difference (within 2 standard errors), consistent with the "
                   "paper's claim that single units are no more semantic than random "
                   "directions")
    elif diff > 0:
        verdict = ("single units are more coherent than random directions by this measure "
                   "(more than 2 standard errors), against the paper's claim")
    else:
        verdict = ("random directions are more coherent than single units by this measure "
                   "(more than 2 standard errors): single units are not special, in line "
                   "with the paper's point")
    return f"{head}: {verdict}."


# ------------------------------------------------------------------------- the figure

def _mosaic(images: torch.Tensor, pad: int = 2, background: float = 0.55) -> torch.Tensor:
    """``images`` ``[rows, k, C, H, W]`` in [0, 1] -> one ``[rows*(H+pad)-pad,
    k*(W+pad)-pad, C]`` array, images separated by ``pad`` pixels of ``background``."""
    import torch

    rows, k, c, h, w = images.shape
    out = torch.full((rows * (h + pad) - pad, k * (w + pad) - pad, c), background,
                     dtype=images.dtype, device=images.device)
    for r in range(rows):
        for j in range(k):
            out[r * (h + pad):r * (h + pad) + h, j * (w + pad):j * (w + pad) + w] = \
                images[r, j].permute(1, 2, 0)
    return out


def probe_figure(images: torch.Tensor, unit_labels: Sequence[str],
                 random_labels: Sequence[str], purity: Sequence[float],
                 cosine: Sequence[float], majority: Sequence[int],
                 classes: Sequence[str] | None, title: str) -> bytes:
    """Two panels side by side, single units left and random directions right; a row per
    direction with its top-k images (best first), labelled with the direction, the majority
    label and its share (purity), and the mean pairwise cosine of the activations.

    ``images`` ``[rows, k, C, H, W]`` holds the unit rows, then the random ones. Returns PNG
    bytes of a fixed layout: ``TILE_INCHES`` per image at 100 dpi, so the height grows with
    the rows and the width with k."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = images.detach().float().cpu().clamp(0, 1)
    nu, nr = len(unit_labels), len(random_labels)
    k = images.shape[1]
    rows = max(nu, nr)
    label_w, gap, margin = LABEL_INCHES, GAP_INCHES, MARGIN_INCHES
    title_h, head_h = TITLE_INCHES, HEADING_INCHES
    panel_w = k * TILE_INCHES
    fig_w = 2 * (label_w + panel_w) + gap + 2 * margin
    panel_h = rows * TILE_INCHES
    fig_h = title_h + head_h + panel_h + margin
    fig = plt.figure(figsize=(fig_w, fig_h), dpi=100)
    fig.text(0.5, 1 - 0.5 * title_h / fig_h, title, ha="center", va="center", fontsize=8,
             wrap=True)
    name = (lambda c: classes[c]) if classes else str
    panels = [("single units (natural basis directions)", 0, nu, unit_labels),
              ("random directions", nu, nr, random_labels)]
    for p, (heading, start, count, labels) in enumerate(panels):
        left = margin + p * (label_w + panel_w + gap) + label_w
        ax = fig.add_axes((left / fig_w, (margin + panel_h - count * TILE_INCHES) / fig_h,
                           panel_w / fig_w, count * TILE_INCHES / fig_h))
        mosaic = _mosaic(images[start:start + count])
        if mosaic.shape[2] == 1:
            ax.imshow(mosaic[:, :, 0].numpy(), cmap="gray", vmin=0, vmax=1,
                      interpolation="nearest", aspect="auto")
        else:
            ax.imshow(mosaic.numpy(), interpolation="nearest", aspect="auto")
        ax.set_xticks([])
        step = mosaic.shape[0] / count
        ax.set_yticks([(r + 0.5) * step for r in range(count)])
        ax.set_yticklabels(
            [f"{labels[r]}\nlabel {name(majority[start + r])}: purity {purity[start + r]:.2f}"
             f"\ncos {cosine[start + r]:.2f}" for r in range(count)], fontsize=6.5)
        ax.tick_params(length=0)
        for spine in ax.spines.values():
            spine.set_visible(False)
        fig.text((left + panel_w / 2) / fig_w, (margin + panel_h + head_h / 2) / fig_h,
                 heading, ha="center", va="center", fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


@hookimpl
def register_analyses(register):
    register("unit-probe", UnitProbe)
