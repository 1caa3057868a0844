"""The unit-probe analysis (Section 3): top-k sets, their numbers, seeds, the figure,
parameter checks and a suite run end to end.

Most tests use a fixed random ReLU net on scikit-learn's 8x8 digits (no training) or an
identity "layer" (the flattened pixels), where every number can be worked out by hand.
"""

from __future__ import annotations

import io
import json
import math
from itertools import combinations

import pytest
import torch
from torch import nn

from harness import Context, Data, Model, ModelError, ParamError
from harness.testing import make_registry, run_suite_text, tiny_data
from harness_plugins.analyses import probes
from harness_plugins.analyses.probes import (
    UnitProbe,
    label_purity,
    mean_pairwise_cosine,
    probe_figure,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small tensors: one thread is as fast, and steadier on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def relu_net(hidden: int = 40, seed: int = 0) -> Model:
    """A fixed random net on the 8x8 digits: 0 Flatten, 1 Linear, 2 ReLU, 3 Linear."""
    gen = torch.Generator().manual_seed(seed)
    module = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
    with torch.no_grad():
        for layer in (module[1], module[3]):
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * 0.3)
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=gen) * 0.3)
    return Model(module, input_shape=(1, 8, 8), num_classes=10, name="relu-net")


@pytest.fixture(scope="module")
def digits() -> Data:
    return tiny_data(300)


def records(res, metric: str) -> dict[str, float]:
    return {r["param"]: r["value"] for r in res.records if r["metric"] == metric}


# --- the top-k sets ------------------------------------------------------------------------

def test_top_k_are_the_argmax_images(digits):
    model = relu_net()
    probe = UnitProbe(layer="2", units=6, directions=5, top=7, batch_size=64)
    sets = probe.probe(model, digits, Context(seed=0))
    with torch.no_grad():
        phi = model.module[:3](digits.x)  # brute force: the ReLU layer on all images at once
    directions = torch.cat([torch.eye(40)[sets.units], sets.directions])
    assert sets.index.shape == (11, 7) and sets.scores.shape == (11, 7)
    for row, d in enumerate(directions):
        score = phi @ d
        best = sorted(range(len(score)), key=lambda i: -float(score[i]))[:7]
        assert sets.index[row].tolist() == best
        assert torch.allclose(sets.scores[row], score[best], atol=1e-5)
        # nothing outside the set scores higher than its worst member
        outside = torch.ones(len(score), dtype=torch.bool)
        outside[best] = False
        assert float(score[outside].max()) <= float(score[best[-1]])
    # the random directions are unit vectors in phi's space
    assert sets.directions.shape == (5, 40)
    assert torch.allclose(sets.directions.norm(dim=1), torch.ones(5), atol=1e-6)


def test_batching_does_not_change_the_sets(digits):
    """The top-k are kept as running bests over batches: any batch size, the same sets."""
    model = relu_net()
    whole = UnitProbe(layer="2", units=6, directions=4, top=5, batch_size=1000).probe(
        model, digits, Context(seed=0))
    for batch_size in (1, 7, 64):
        parts = UnitProbe(layer="2", units=6, directions=4, top=5,
                          batch_size=batch_size).probe(model, digits, Context(seed=0))
        assert parts.units == whole.units
        assert torch.equal(parts.index, whole.index)
        assert torch.allclose(parts.scores, whole.scores, atol=1e-6)
        for metric, values in whole.numbers.items():
            assert torch.allclose(parts.numbers[metric], values, atol=1e-6)


def test_ties_at_place_k_are_noted():
    """Unit 1 of the constructed case is 0.3 on image 4, 0.2 on image 6, 0.1 on images 0
    and 7, 0 elsewhere: its top 3 ends in a tie between images 0 and 7."""
    model, data, _ = constructed_case()
    res = UnitProbe(layer="0", units=[1, 3], directions=1, top=3).run(model, data, Context())
    assert any(note.startswith("tie at place 3 (unit=1)") for note in res.notes)
    res = UnitProbe(layer="0", units=[3], directions=1, top=3).run(model, data, Context())
    assert not any("tie" in note for note in res.notes)


def test_grad_mode_is_left_as_it_was(digits):
    UnitProbe(layer="2", units=2, directions=2, top=3, batch_size=50).run(
        relu_net(), digits, Context())
    assert torch.is_grad_enabled()


def test_counted_units_are_live_and_distinct(digits):
    model = relu_net()
    with torch.no_grad():
        phi = model.module[:3](digits.x)
    dead = (phi.amax(0) == phi.amin(0)).nonzero().flatten().tolist()
    assert dead, "the fixture net should have dead units for this test to mean anything"
    sets = UnitProbe(layer="2", units=20, directions=1).probe(model, digits, Context(seed=0))
    assert len(set(sets.units)) == 20 and not set(sets.units) & set(dead)
    assert sets.n_live == 40 - len(dead)
    # asking for every live unit gives exactly the live ones
    every = UnitProbe(layer="2", units=sets.n_live, directions=1).probe(model, digits,
                                                                        Context(seed=5))
    assert sorted(every.units) == sorted(set(range(40)) - set(dead))
    with pytest.raises(ParamError, match="live") as info:
        UnitProbe(layer="2", units=sets.n_live + 1).probe(model, digits, Context())
    assert info.value.param == "units"


# --- the numbers ---------------------------------------------------------------------------

def test_purity_and_cosine_helpers():
    labels = torch.tensor([[1, 1, 2, 3], [5, 5, 5, 5], [0, 1, 2, 3]])
    assert label_purity(labels, 10).tolist() == [0.5, 1.0, 0.25]
    feats = torch.tensor([
        [[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]],   # pairs: 1, 0, 0
        [[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]],   # identical: 1
        [[1.0, 0.0], [-1.0, 0.0], [0.0, 0.0]],  # -1, and a zero vector: 0, 0
    ])
    assert torch.allclose(mean_pairwise_cosine(feats), torch.tensor([1 / 3, 1.0, -1 / 3]))


def constructed_case():
    """phi = the four pixels of 2x2 images (layer 0, Flatten). Unit 0's top 3 are images
    0, 1, 2 (labels 4, 4, 7); unit 3's top 3 are images 3, 4, 5 (labels 1, 1, 1)."""
    x = torch.zeros(8, 1, 2, 2)
    flat = x.view(8, 4)
    flat[0] = torch.tensor([0.9, 0.1, 0.0, 0.0])
    flat[1] = torch.tensor([0.8, 0.0, 0.2, 0.0])
    flat[2] = torch.tensor([0.7, 0.0, 0.0, 0.0])
    flat[3] = torch.tensor([0.0, 0.0, 0.0, 1.0])
    flat[4] = torch.tensor([0.0, 0.3, 0.0, 0.9])
    flat[5] = torch.tensor([0.1, 0.0, 0.0, 0.8])
    flat[6] = torch.tensor([0.2, 0.2, 0.2, 0.2])
    flat[7] = torch.tensor([0.0, 0.1, 0.1, 0.0])
    y = torch.tensor([4, 4, 7, 1, 1, 1, 0, 2])
    module = nn.Sequential(nn.Flatten(), nn.Linear(4, 10))
    model = Model(module, input_shape=(1, 2, 2), num_classes=10, name="identity")
    return model, Data(x, y, 10, "constructed"), flat


def pairwise_cos(vectors: torch.Tensor) -> float:
    pairs = [float(torch.nn.functional.cosine_similarity(a, b, dim=0))
             for a, b in combinations(vectors, 2)]
    return sum(pairs) / len(pairs)


def test_numbers_on_a_constructed_case():
    model, data, flat = constructed_case()
    res = UnitProbe(layer="0", units=[0, 3], directions=2, top=3).run(model, data, Context())
    purity = records(res, "purity")
    assert purity["unit=0"] == pytest.approx(2 / 3) and purity["unit=3"] == 1.0
    cosine = records(res, "cosine")
    # phi is the pixels here, so both cosines are those of the same vectors
    assert cosine["unit=0"] == pytest.approx(pairwise_cos(flat[[0, 1, 2]]), abs=1e-6)
    assert cosine["unit=3"] == pytest.approx(pairwise_cos(flat[[3, 4, 5]]), abs=1e-6)
    assert records(res, "pixel_cosine")["unit=3"] == pytest.approx(cosine["unit=3"], abs=1e-6)
    # the summaries are the mean and sample std over the rows of each kind
    assert records(res, "purity_mean")["units"] == pytest.approx((2 / 3 + 1) / 2)
    assert records(res, "purity_std")["units"] == pytest.approx(math.sqrt(2) * (1 / 6))
    rand = [purity["random=0"], purity["random=1"]]
    assert records(res, "purity_mean")["random"] == pytest.approx(sum(rand) / 2)
    assert records(res, "cosine_mean")["units"] == pytest.approx(
        (cosine["unit=0"] + cosine["unit=3"]) / 2)
    assert set(records(res, "cosine_mean")) == {"units", "random", "chance"}
    # chance: random 3-image sets of 8 labels (4, 4, 7, 1, 1, 1, 0, 2) have purity
    # 1/3 unless two or three labels agree; the mean is far below unit 3's 1.0
    assert 1 / 3 <= records(res, "purity_mean")["chance"] < 0.6
    # the notes say what was compared and read the comparison off the numbers
    text = " ".join(res.notes)
    assert "2 single units of layer '0'" in text and "2 random" in text and "top 3 of 8" in text
    assert f"units {records(res, 'purity_mean')['units']:.3f}" in text


def test_reading_follows_the_numbers():
    def summary(units, random):
        return {("purity", "units"): units, ("purity", "random"): random,
                ("purity", "chance"): (0.3, 0.1, 256)}

    same = probes.reading("purity", summary((0.80, 0.10, 8), (0.78, 0.12, 8)), 8)
    assert "no clear difference" in same and "+0.020" in same
    more = probes.reading("purity", summary((0.95, 0.05, 8), (0.60, 0.10, 8)), 8)
    assert "single units are more coherent" in more
    less = probes.reading("purity", summary((0.50, 0.05, 8), (0.90, 0.05, 8)), 8)
    assert "random directions are more coherent" in less
    one = probes.reading("purity", summary((0.9, 0.0, 1), (0.5, 0.1, 8)), 8)
    assert "too few rows" in one


# --- seeds ---------------------------------------------------------------------------------

def test_reproducible_by_seed_and_different_with_another(digits):
    model = relu_net()
    probe = UnitProbe(layer="2", units=5, directions=4, top=6)
    first = probe.run(model, digits, Context(seed=1))
    again = UnitProbe(layer="2", units=5, directions=4, top=6).run(model, digits,
                                                                    Context(seed=1))
    assert first.records == again.records
    assert first.figures["units.png"] == again.figures["units.png"]
    other = probe.run(model, digits, Context(seed=2))
    units = [r["param"] for r in first.records if r["metric"] == "purity"][:5]
    other_units = [r["param"] for r in other.records if r["metric"] == "purity"][:5]
    assert units != other_units
    a = probe.probe(model, digits, Context(seed=1))
    b = probe.probe(model, digits, Context(seed=2))
    assert not torch.allclose(a.directions, b.directions)
    # explicit units do not depend on the seed; the random directions still do
    fixed = UnitProbe(layer="2", units=[3, 1], directions=2)
    c, d = (fixed.probe(model, digits, Context(seed=s)) for s in (1, 2))
    assert c.units == d.units == [3, 1] and torch.equal(c.index[:2], d.index[:2])
    assert not torch.equal(c.index[2:], d.index[2:])


# --- the figure ----------------------------------------------------------------------------

def png_shape(png: bytes) -> tuple[int, ...]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image

    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return matplotlib.image.imread(io.BytesIO(png), format="png").shape


def test_figure_is_a_png_whose_size_follows_rows_and_k(digits):
    model = relu_net()
    shapes = {}
    for units, directions, top in [(2, 2, 4), (6, 2, 4), (2, 6, 4), (2, 2, 8)]:
        res = UnitProbe(layer="2", units=units, directions=directions, top=top).run(
            model, digits, Context())
        shapes[units, directions, top] = png_shape(res.figures["units.png"])
    h, w, channels = shapes[2, 2, 4]
    assert channels in (3, 4)
    tile = int(probes.TILE_INCHES * 100)
    # four more rows on either side add four tiles of height, and nothing to the width
    assert shapes[6, 2, 4][:2] == (h + 4 * tile, w)
    assert shapes[2, 6, 4][:2] == (h + 4 * tile, w)
    # four more images per row add four tiles of width to each of the two panels
    assert shapes[2, 2, 8][:2] == (h, w + 8 * tile)


def test_figure_shows_the_images_in_order():
    """Distinct flat grey levels per image: the pixels of the grid come back in row order."""
    levels = torch.linspace(0.1, 0.9, 6)
    images = levels.view(2, 3, 1, 1, 1).expand(2, 3, 1, 8, 8)  # rows of 3 images
    png = probe_figure(images, ["unit 7"], ["random 0"], [1.0, 0.5], [0.9, 0.8], [3, 4],
                       None, "t")
    import matplotlib.image

    arr = matplotlib.image.imread(io.BytesIO(png), format="png")[:, :, 0]
    dpi_tile = probes.TILE_INCHES * 100
    # the centre of each image tile: panels are laid out from the left, units first
    label_w, gap, margin = (probes.LABEL_INCHES * 100, probes.GAP_INCHES * 100,
                            probes.MARGIN_INCHES * 100)
    top = arr.shape[0] - margin - dpi_tile  # one row per panel, above the bottom margin
    seen = []
    for panel in range(2):
        left = margin + panel * (label_w + 3 * dpi_tile + gap) + label_w
        for j in range(3):
            cx = int(left + (j + 0.5) * dpi_tile)
            seen.append(float(arr[int(top + dpi_tile / 2), cx]))
    assert seen == pytest.approx(levels.tolist(), abs=0.02)


# --- parameters ----------------------------------------------------------------------------

@pytest.mark.parametrize("params, bad", [
    ({"layer": ""}, "layer"),
    ({"layer": "2", "units": 0}, "units"),
    ({"layer": "2", "units": []}, "units"),
    ({"layer": "2", "units": [3, -1]}, "units"),
    ({"layer": "2", "units": [3, 3]}, "units"),
    ({"layer": "2", "units": True}, "units"),
    ({"layer": "2", "directions": 0}, "directions"),
    ({"layer": "2", "top": 1}, "top"),
    ({"layer": "2", "top": 0}, "top"),
    ({"layer": "2", "batch_size": 0}, "batch_size"),
])
def test_bad_parameters_raise_param_error(params, bad):
    with pytest.raises(ParamError) as info:
        UnitProbe(**params)
    assert info.value.param == bad and "\n" not in str(info.value)


@pytest.mark.parametrize("params, bad", [
    ({"units": 8}, "layer"),                        # layer is required
    ({"layer": "2", "unit": 8}, "unit"),            # a typo
    ({"layer": "2", "units": "many"}, "units"),     # wrong type
    ({"layer": "2", "top": 1.5}, "top"),
])
def test_bad_parameters_through_the_registry(params, bad):
    with pytest.raises(ParamError) as info:
        make_registry().build("analysis", "unit-probe", params)
    assert info.value.param == bad


def test_registry_builds_it_with_a_numeric_layer():
    probe = make_registry().build("analysis", "unit-probe", {"layer": 2, "units": [1, 5]})
    assert isinstance(probe, UnitProbe) and probe.layer == "2" and probe.units == [1, 5]
    assert probe.needs_data and probe.needs_module


def test_unit_index_out_of_range_is_a_clear_error(digits):
    with pytest.raises(ParamError, match=r"unit index 40 is out of range: layer '2' has 40 "
                                         r"units \(0\.\.39\)") as info:
        UnitProbe(layer="2", units=[0, 40]).run(relu_net(), digits, Context())
    assert info.value.param == "units"


def test_top_larger_than_the_data_is_a_clear_error(digits):
    with pytest.raises(ParamError, match="more than the 5 images") as info:
        UnitProbe(layer="2", top=6).run(relu_net(), digits.head(5), Context())
    assert info.value.param == "top"


def test_unknown_layer_names_the_layers(digits):
    with pytest.raises(ModelError, match="has no layer 'fc9'") as info:
        UnitProbe(layer="fc9").run(relu_net(), digits, Context())
    assert info.value.hint == "layers: 0, 1, 2, 3"


def test_dead_explicit_units_are_noted(digits):
    model = relu_net()
    with torch.no_grad():
        phi = model.module[:3](digits.x)
    dead = (phi.amax(0) == phi.amin(0)).nonzero().flatten().tolist()
    res = UnitProbe(layer="2", units=[dead[0], 0 if dead[0] else 1], directions=2).run(
        model, digits, Context())
    assert any(f"units [{dead[0]}] are dead" in note for note in res.notes)


# --- in a suite ----------------------------------------------------------------------------

SUITE = """\
name: probes
seed: 3
data: {use: digits, split: test}
models:
  net: {use: mlp, hidden: [32], epochs: 60}
tests:
  - name: probe
    analysis: {use: unit-probe, layer: 2, units: 4, directions: 3, top: 5}
  - name: bad-layer
    analysis: {use: unit-probe, layer: 7}
gates:
  - {test: probe, model: net, metric: purity_mean, param: chance, max: 0.6}
  - {test: probe, model: net, metric: purity_mean, param: units, min: 0.6}
"""


def test_runs_in_a_suite(tmp_path):
    code, results = run_suite_text(SUITE, tmp_path)
    probe = results[results.test == "probe"]
    rows = probe[probe.metric == "purity"]
    assert len(rows) == 7 and sorted(rows.param)[:3] == ["random=0", "random=1", "random=2"]
    means = probe[probe.metric == "purity_mean"].set_index("param").value
    assert set(means.index) == {"units", "random", "chance"}
    # a trained net's top-5 sets are far purer than random sets of 5 (about 0.3)
    assert means["units"] > means["chance"] + 0.3 and means["random"] > means["chance"] + 0.3
    assert (tmp_path / "run" / "figures" / "probe" / "net" / "units.png").is_file()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    cases = {c["test"]: c for c in summary["cases"]}
    assert cases["probe"]["status"] == "ok"
    assert any("random directions" in note for note in cases["probe"]["notes"])
    # the bad layer fails its own case, with the layers named, and not the others
    assert cases["bad-layer"]["status"] == "error"
    assert "no layer '7'" in cases["bad-layer"]["error"]
    assert "layers: 0, 1, 2, 3" in cases["bad-layer"]["error"]
    assert [g["passed"] for g in summary["gates"]] == [True, True]
    assert code == 2  # a model error is the user's to fix: exit code 2


# --- a conv net on MNIST (when the files are present) -------------------------------------

def test_conv_layer_of_a_small_conv_net(mnist_dir, tmp_path):
    registry = make_registry()
    ctx = Context(data_dir=mnist_dir, cache_dir=tmp_path, registry=registry)
    model = registry.build("model", "paper-mnist",
                           {"conv": [4, 8], "hidden": [16], "limit": 1000, "epochs": 4,
                            "batch_size": 50, "lr": 5e-3}).load(ctx)
    test = ctx.dataset("mnist", split="test", limit=500)
    sets = UnitProbe(layer="5", units=3, directions=2, top=4).probe(model, test, ctx)
    assert sets.width == 8 * 7 * 7 and sets.index.shape == (5, 4)
    res = UnitProbe(layer="8", units=3, directions=2, top=4).run(model, test, ctx)
    assert len(records(res, "purity")) == 5
    assert png_shape(res.figures["units.png"])[0] > 3 * int(probes.TILE_INCHES * 100)
