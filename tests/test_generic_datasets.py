"""The streamed datasets: synthetic, image-folder, tensors, torchvision (Fashion-MNIST)."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from harness import Context, DataError, ParamError, StreamedData
from harness.cli import main
from harness.plugins import default_registry

FASHION = Path(os.environ.get("HARNESS_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
needs_fashion = pytest.mark.skipif(
    not (FASHION / "t10k-images-idx3-ubyte.gz").is_file(),
    reason=f"Fashion-MNIST not found in {FASHION} (apt-get install dataset-fashion-mnist)")


@pytest.fixture(scope="module")
def registry():
    return default_registry()


def load(registry, use, ctx=None, **params):
    return registry.build("dataset", use, params).load(ctx or Context())


def all_of(data, batch_size=7, **kw):
    xs, ys, idx = [], [], []
    for b in data.batches(batch_size, **kw):
        xs.append(b.x)
        ys.append(b.y)
        idx.append(b.index)
    return torch.cat(xs), torch.cat(ys), torch.cat(idx)


# ---------------------------------------------------------------------------- synthetic

def test_synthetic_images_depend_on_seed_and_index_only(registry):
    data = load(registry, "synthetic", Context(seed=3), shape=[3, 5, 6], num_classes=4, size=20)
    assert isinstance(data, StreamedData) and len(data) == 20
    assert data.input_shape == (3, 5, 6) and data.num_classes == 4
    x, y, idx = all_of(data)
    assert idx.tolist() == list(range(20)) and 0 <= float(x.min()) and float(x.max()) <= 1
    assert set(y.tolist()) <= set(range(4)) and len(set(y.tolist())) > 1
    # any range, any batch size: the same images
    part = data.slice(5, 10)
    xp, yp, ip = all_of(part, batch_size=3)
    assert torch.equal(xp, x[5:15]) and torch.equal(yp, y[5:15]) and ip.tolist() == list(range(10))
    # offset/limit as parameters give the same slice
    off = load(registry, "synthetic", Context(seed=3), shape=[3, 5, 6], num_classes=4, size=20,
               offset=5, limit=10)
    assert torch.equal(all_of(off)[0], x[5:15]) and off.fingerprint() == part.fingerprint()
    again = load(registry, "synthetic", Context(seed=3), shape=[3, 5, 6], num_classes=4, size=20)
    other = load(registry, "synthetic", Context(seed=4), shape=[3, 5, 6], num_classes=4, size=20)
    assert again.fingerprint() == data.fingerprint() != other.fingerprint()
    assert not torch.equal(all_of(other)[0], x)
    fixed = load(registry, "synthetic", Context(seed=4), shape=[3, 5, 6], num_classes=4,
                 size=20, seed=3)
    assert torch.equal(all_of(fixed)[0], x)


def test_synthetic_with_transform_and_bad_parameters(registry):
    data = load(registry, "synthetic", shape=[1, 40, 60], size=3,
                transform=[{"resize": 20}, {"center_crop": 16}, "grayscale_to_rgb"])
    x, _, _ = all_of(data)
    assert data.input_shape == (3, 16, 16) and x.shape == (3, 3, 16, 16)
    assert torch.equal(x[:, 0], x[:, 2])
    for params, field in [({"shape": [3, 0, 4]}, "shape"), ({"num_classes": 0}, "num_classes"),
                          ({"size": 0}, "size"), ({"offset": -1}, "offset"),
                          ({"limit": 0}, "limit"), ({"workers": -2}, "workers"),
                          ({"transform": [{"center_crop": 64}]}, "transform"),
                          ({"transform": ["sharpen"]}, "transform"),
                          ({"transform": [{"resize": [1, 2, 3]}]}, "transform")]:
        with pytest.raises(ParamError) as info:
            registry.build("dataset", "synthetic", {"shape": [3, 32, 32], **params})
        assert info.value.param == field, params
    with pytest.raises(ParamError, match="larger than"):
        registry.build("dataset", "synthetic", {"shape": [3, 32, 32],
                                                "transform": [{"center_crop": 64}]})


def test_imagenet_preset_resizes_the_short_side_then_crops(registry):
    data = load(registry, "synthetic", shape=[3, 300, 400], size=2, transform="imagenet")
    assert data.input_shape == (3, 224, 224)
    assert all_of(data)[0].shape == (2, 3, 224, 224)


# ---------------------------------------------------------------------------- image folder

def write_folder(root: Path, sizes: dict[str, list[tuple[int, int]]], mode: str = "RGB",
                 seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Class folders of PNG images of the given (width, height); returns the pixels."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels: dict[str, list[np.ndarray]] = {}
    for cls, dims in sizes.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for k, (w, h) in enumerate(dims):
            arr = rng.integers(0, 256, (h, w, 3) if mode == "RGB" else (h, w), dtype=np.uint8)
            Image.fromarray(arr, mode).save(root / cls / f"img{k}.png")
            pixels.setdefault(cls, []).append(arr)
    return pixels


def test_image_folder_labels_follow_the_class_list(registry, tmp_path):
    pixels = write_folder(tmp_path / "photos", {"cat": [(8, 6)] * 3, "dog": [(8, 6)] * 2,
                                                "eel": [(8, 6)]})
    (tmp_path / "classes.txt").write_text("# model outputs\ndog\nbird\ncat\neel\n")
    data = load(registry, "image-folder", root=str(tmp_path / "photos"),
                classes=str(tmp_path / "classes.txt"))
    assert data.num_classes == 4 and data.classes == ["dog", "bird", "cat", "eel"]
    assert data.input_shape == (3, 6, 8)
    x, y, _ = all_of(data, batch_size=4)
    # interleaved: the first image of every class, then the second...
    assert y.tolist() == [0, 2, 3, 0, 2, 2]
    expect = torch.from_numpy(pixels["dog"][0]).permute(2, 0, 1).float() / 255
    assert torch.allclose(x[0], expect)
    by_path = load(registry, "image-folder", root=str(tmp_path / "photos"), order="sorted",
                   classes={"cat": 5, "dog": 1, "eel": 2})
    assert all_of(by_path)[1].tolist() == [1, 1, 2, 5, 5, 5] and by_path.num_classes == 6
    # default: sorted folder names
    plain = load(registry, "image-folder", root=str(tmp_path / "photos"), limit=2)
    assert plain.classes == ["cat", "dog", "eel"] and all_of(plain)[1].tolist() == [0, 1]


def test_image_folder_class_files_json(registry, tmp_path):
    write_folder(tmp_path / "val", {"n01": [(4, 4)], "n02": [(4, 4)]})
    imagenet_style = {"0": ["n02", "goldfish"], "1": ["n01", "tench"]}
    (tmp_path / "index.json").write_text(json.dumps(imagenet_style))
    data = load(registry, "image-folder", root=str(tmp_path / "val"),
                classes=str(tmp_path / "index.json"), order="sorted")
    # sorted: by class index, then path (n02 is class 0)
    assert data.classes == ["goldfish", "tench"] and all_of(data)[1].tolist() == [0, 1]
    (tmp_path / "list.json").write_text(json.dumps(["n02", "n01", "n03"]))
    data = load(registry, "image-folder", root=str(tmp_path / "val"),
                classes=str(tmp_path / "list.json"), order="sorted")
    assert data.num_classes == 3 and all_of(data)[1].tolist() == [0, 1]
    assert data.classes == ["n02", "n01", "n03"]


def test_image_folder_errors_are_caught_before_running(registry, tmp_path):
    write_folder(tmp_path / "photos", {"cat": [(4, 4)], "dgo": [(4, 4)], "yak": [(4, 4)]})
    root = str(tmp_path / "photos")
    with pytest.raises(ParamError) as info:
        registry.build("dataset", "image-folder", {"root": root, "classes": ["cat", "dog"]})
    assert info.value.param == "classes"
    assert "dgo, yak" in str(info.value) and "did you mean 'dog'" in str(info.value)
    with pytest.raises(ParamError) as info:
        registry.build("dataset", "image-folder", {"root": str(tmp_path / "nope")})
    assert info.value.param == "root" and "not found" in str(info.value)
    with pytest.raises(ParamError) as info:
        registry.build("dataset", "image-folder", {"root": root, "classes": "missing.txt"})
    assert info.value.param == "classes"
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ParamError, match="not valid JSON"):
        registry.build("dataset", "image-folder", {"root": root, "classes": str(tmp_path / "bad.json")})
    (tmp_path / "empty").mkdir()
    with pytest.raises(ParamError, match="no class sub-folders"):
        registry.build("dataset", "image-folder", {"root": str(tmp_path / "empty")})


def test_image_folder_sizes_transforms_and_broken_files(registry, tmp_path):
    write_folder(tmp_path / "mixed", {"a": [(40, 30), (30, 40)], "b": [(50, 50)]}, mode="L")
    root = str(tmp_path / "mixed")
    data = load(registry, "image-folder", root=root)
    with pytest.raises(DataError) as info:
        all_of(data)
    msg = str(info.value)
    assert "\n" not in msg and "img" in msg and "transform" in msg
    fixed = load(registry, "image-folder", root=root, color="gray",
                 transform=[{"resize": 24}, {"center_crop": 20}])
    x, y, _ = all_of(fixed)
    assert x.shape == (3, 1, 20, 20) and fixed.input_shape == (1, 20, 20)
    (tmp_path / "mixed" / "b" / "broken.png").write_bytes(b"not a png")
    broken = load(registry, "image-folder", root=root, transform=[{"resize": [20, 20]}])
    with pytest.raises(DataError, match="cannot read image .*broken.png"):
        all_of(broken)


def test_image_folder_fingerprint_from_file_identities(registry, tmp_path):
    write_folder(tmp_path / "f", {"a": [(4, 4)] * 2, "b": [(4, 4)]})
    root = str(tmp_path / "f")
    first = load(registry, "image-folder", root=root).fingerprint()
    assert load(registry, "image-folder", root=root).fingerprint() == first
    assert load(registry, "image-folder", root=root, color="gray").fingerprint() != first
    assert load(registry, "image-folder", root=root,
                transform=[{"resize": [2, 2]}]).fingerprint() != first
    write_folder(tmp_path / "f", {"b": [(4, 4)] * 2}, seed=1)
    assert load(registry, "image-folder", root=root).fingerprint() != first


def test_workers_give_the_same_batches_and_one_line_errors(registry, tmp_path):
    write_folder(tmp_path / "w", {"a": [(6, 6)] * 5, "b": [(6, 6)] * 4})
    root = str(tmp_path / "w")
    serial = all_of(load(registry, "image-folder", root=root), batch_size=4)
    parallel = all_of(load(registry, "image-folder", root=root, workers=2), batch_size=4)
    assert all(torch.equal(a, b) for a, b in zip(serial, parallel))
    (tmp_path / "w" / "a" / "zz.png").write_bytes(b"junk")
    broken = load(registry, "image-folder", root=root, workers=2)
    with pytest.raises(DataError) as info:
        all_of(broken, batch_size=4)
    assert "\n" not in str(info.value) and "zz.png" in str(info.value)


# ---------------------------------------------------------------------------- tensor files

@pytest.fixture
def arrays():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 9, 7, 3), dtype=np.uint8)      # NHWC, 0..255
    labels = rng.integers(0, 5, 12).astype(np.int64)
    expect = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    return images, labels, expect


@pytest.mark.parametrize("fmt", ["safetensors", "npy", "npz", "pt"])
def test_tensor_files_of_every_format(registry, tmp_path, arrays, fmt):
    images, labels, expect = arrays
    params: dict = {}
    if fmt == "safetensors":
        from safetensors.numpy import save_file

        path = tmp_path / "d.safetensors"
        save_file({"x": images, "y": labels}, str(path))
    elif fmt == "npy":
        path = tmp_path / "d.npy"
        np.save(path, images)
        np.save(tmp_path / "labels.npy", labels)
        params["labels"] = str(tmp_path / "labels.npy")
    elif fmt == "npz":
        path = tmp_path / "d.npz"
        np.savez(path, images=images, labels=labels)
    else:
        path = tmp_path / "d.pt"
        torch.save({"images": torch.from_numpy(images), "targets": torch.from_numpy(labels)}, path)
    data = load(registry, "tensors", path=str(path), offset=2, limit=8, **params)
    assert data.input_shape == (3, 9, 7) and data.num_classes == 5 and len(data) == 8
    x, y, _ = all_of(data, batch_size=3)
    assert torch.allclose(x, expect[2:10]) and y.tolist() == labels[2:10].tolist()
    assert data.fingerprint() == load(registry, "tensors", path=str(path), offset=2, limit=8,
                                      **params).fingerprint()
    if fmt == "npy":   # memory-mapped: the file is read image by image
        assert isinstance(data.dataset.file._open()["images"], np.memmap)


def test_tensor_files_float_layouts_and_errors(registry, tmp_path):
    x = torch.rand(6, 1, 5, 5)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    from safetensors.torch import save_file

    save_file({"pixels": x, "classes_idx": y}, str(tmp_path / "f.safetensors"))
    with pytest.raises(ParamError) as info:     # found by preflight: the arrays' names
        registry.build("dataset", "tensors", {"path": str(tmp_path / "f.safetensors")}).preflight(Context())
    assert info.value.param == "images" and "pixels" in str(info.value)
    data = load(registry, "tensors", path=str(tmp_path / "f.safetensors"), images="pixels",
                labels="classes_idx", classes=["a", "b", "c"])
    got, labels, _ = all_of(data)
    assert torch.equal(got, x) and labels.tolist() == y.tolist() and data.classes == ["a", "b", "c"]
    save_file({"images": x * 255, "labels": y}, str(tmp_path / "big.safetensors"))
    with pytest.raises(DataError, match="scale: 255"):
        all_of(load(registry, "tensors", path=str(tmp_path / "big.safetensors")))
    scaled = load(registry, "tensors", path=str(tmp_path / "big.safetensors"), scale=255)
    assert torch.allclose(all_of(scaled)[0], x, atol=1e-6)
    with pytest.raises(ParamError) as info:
        registry.build("dataset", "tensors", {"path": str(tmp_path / "d.csv")})
    assert info.value.param == "path"
    (tmp_path / "d.csv").write_text("1,2")
    with pytest.raises(ParamError, match="unknown tensor file type"):
        registry.build("dataset", "tensors", {"path": str(tmp_path / "d.csv")})
    np.save(tmp_path / "only.npy", np.zeros((2, 3, 3), np.uint8))
    with pytest.raises(ParamError) as info:
        registry.build("dataset", "tensors", {"path": str(tmp_path / "only.npy")})
    assert info.value.param == "labels"


def test_tensor_file_pin(registry, tmp_path):
    import hashlib

    path = tmp_path / "d.npz"
    np.savez(path, images=np.zeros((3, 1, 4, 4), np.float32), labels=np.arange(3))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    registry.build("dataset", "tensors", {"path": str(path), "sha256": digest}).preflight(Context())
    with pytest.raises(ParamError) as info:
        registry.build("dataset", "tensors", {"path": str(path), "sha256": "0" * 64}).preflight(Context())
    assert info.value.param == "sha256" and digest in str(info.value)


# ---------------------------------------------------------------------------- torchvision

def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped), read independently of torchvision."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * dims).reshape(shape)


@needs_fashion
def test_fashion_mnist_through_torchvision(registry, tmp_path):
    before = sorted(os.listdir(FASHION))
    ctx = Context(cache_dir=tmp_path / "cache")
    test = load(registry, "torchvision", ctx, **{"class": "FashionMNIST", "train": False,
                                                 "root": str(FASHION)})
    assert len(test) == 10000 and test.input_shape == (1, 28, 28) and test.num_classes == 10
    assert test.classes[9] == "Ankle boot"
    labels = read_idx(FASHION / "t10k-labels-idx1-ubyte.gz")
    pixels = read_idx(FASHION / "t10k-images-idx3-ubyte.gz")
    part = test.slice(100, 50)
    x, y, _ = all_of(part, batch_size=16)
    assert y.tolist() == labels[100:150].tolist()
    assert torch.equal(x[:, 0], torch.from_numpy(pixels[100:150].astype(np.float32)) / 255)
    # the originals are left alone; their unpacked copies live in the cache
    assert sorted(os.listdir(FASHION)) == before
    assert any((tmp_path / "cache" / "torchvision-staging").rglob("t10k-images-idx3-ubyte"))
    # found through --data-dir (the parent folder) as well, with the same fingerprint
    via_dir = load(registry, "torchvision", Context(cache_dir=tmp_path / "c2",
                                                    data_dir=FASHION.parent),
                   **{"class": "FashionMNIST", "train": False})
    assert via_dir.fingerprint() == test.fingerprint()
    train = load(registry, "torchvision", ctx, **{"class": "FashionMNIST", "train": True,
                                                  "root": str(FASHION), "limit": 5,
                                                  "transform": [{"resize": 32},
                                                                "grayscale_to_rgb"]})
    xt, yt, _ = all_of(train)
    assert xt.shape == (5, 3, 32, 32)
    assert yt.tolist() == read_idx(FASHION / "train-labels-idx1-ubyte.gz")[:5].tolist()
    assert train.fingerprint() != test.fingerprint()


def test_torchvision_missing_dataset_is_one_line(registry, tmp_path):
    ctx = Context(cache_dir=tmp_path / "cache", data_dir=tmp_path / "data")
    with pytest.raises(DataError) as info:
        load(registry, "torchvision", ctx, **{"class": "KMNIST", "train": False})
    msg = str(info.value)
    assert "\n" not in msg and "KMNIST not found in" in msg and str(tmp_path / "data") in msg
    assert "--data-dir" in msg and "download: true" in msg
    with pytest.raises(DataError, match="CIFAR10 not found"):
        load(registry, "torchvision", ctx, **{"class": "CIFAR10", "train": False})


def test_torchvision_parameters_are_checked(registry):
    with pytest.raises(ParamError) as info:
        registry.build("dataset", "torchvision", {"class": "FashionMnist"})
    assert info.value.param == "class" and "FashionMNIST" in str(info.value)
    with pytest.raises(ParamError) as info:
        registry.build("dataset", "torchvision", {"class": "MNIST", "split": "test", "train": False})
    assert info.value.param == "train"
    with pytest.raises(ParamError) as info:
        registry.build("dataset", "torchvision", {"class": "CIFAR10",
                                                  "transform": [{"center_crop": 40}]})
    assert info.value.param == "transform" and "32x32" in str(info.value)
    with pytest.raises(ParamError) as info:
        registry.build("dataset", "torchvision", {"class": "CIFAR10", "args": {"root": "x"}})
    assert info.value.param == "args"
    plugin = registry.build("dataset", "torchvision", {"class": "FashionMNIST", "split": "test"})
    assert plugin.params()["class_"] == "FashionMNIST"
    with pytest.raises(DataError, match="takes no split"):
        plugin._kwargs(__import__("torchvision").datasets.FashionMNIST)


# ---------------------------------------------------------------------------- suites

def test_validate_names_the_line_of_a_bad_dataset(tmp_path, capsys):
    write_folder(tmp_path / "photos", {"cat": [(4, 4)], "dog": [(4, 4)]})
    suite = tmp_path / "s.yaml"
    suite.write_text(f"""name: s
data:
  use: image-folder
  root: {tmp_path / 'photos'}
  classes: [cat, cow]
models:
  m: {{use: torch, factory: "tiny_models:linear", kwargs: {{in_features: 48, classes: 2}}}}
tests:
  - name: clean
""")
    assert main(["validate", str(suite)]) == 2
    err = capsys.readouterr().err
    assert f"{suite}:5:" in err and "data.classes" in err and "dog" in err
    suite.write_text(suite.read_text().replace("[cat, cow]", "[cat, dog]").replace(
        "use: image-folder", "use: torchvision\n  class: Imagenet").replace(
        f"  root: {tmp_path / 'photos'}\n  classes: [cat, dog]\n", ""))
    assert main(["validate", str(suite)]) == 2
    err = capsys.readouterr().err
    assert f"{suite}:4:" in err and "ImageNet" in err


def test_a_suite_on_an_image_folder_runs_end_to_end(tmp_path, capsys):
    write_folder(tmp_path / "photos", {"cat": [(10, 8)] * 4, "dog": [(8, 10)] * 4})
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    suite = tmp_path / "s.yaml"
    suite.write_text(f"""name: folder
data: {{use: image-folder, root: {tmp_path / 'photos'}, classes: {tmp_path / 'classes.txt'},
       transform: [{{resize: [4, 4]}}]}}
models:
  m: {{use: torch, factory: "tiny_models:linear", kwargs: {{in_features: 48, classes: 2}}}}
tests:
  - name: clean
  - name: noise
    attack: {{use: gaussian-noise, stddev: 0.1}}
""")
    out = tmp_path / "run"
    assert main(["run", str(suite), "--out", str(out), "-q", "--cache-dir",
                 str(tmp_path / "cache")]) == 0
    results = pd.read_csv(out / "results.csv")
    clean = results[(results.test == "clean") & (results.metric == "clean_error")]
    assert len(clean) == 1 and int(clean.n.iloc[0]) == 8 and 0 <= clean.value.iloc[0] <= 1


@pytest.mark.slow
@needs_fashion
def test_the_bundled_fashion_mnist_suite(tmp_path):
    """suites/fashion-mnist.yaml: trains both nets on the 60,000 training images (minutes);
    its gates (conv test error <= 15%, L-BFGS success on the conv net) pass."""
    out = tmp_path / "run"
    assert main(["run", "fashion-mnist", "--out", str(out), "-q", "--threads", "1",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    res = pd.read_csv(out / "results.csv").fillna({"param": ""})
    value = res.set_index(["test", "model", "metric", "param"]).value
    assert value["test-error", "conv", "clean_error", ""] <= 0.15
    assert value["lbfgs", "conv", "success_rate", ""] == 1.0
    # the paper's point on another dataset: a far smaller perturbation than noise that
    # barely changes the error
    assert value["lbfgs", "conv", "mean_distortion", ""] < 0.1
    assert value["noise", "conv", "adv_error", "stddev=0.1"] < 0.3


def test_a_class_that_writes_beside_read_only_files_gets_a_linked_folder(registry, tmp_path,
                                                                           monkeypatch):
    import torchvision.datasets as tvd

    originals = tmp_path / "readonly"
    (originals / "val").mkdir(parents=True)
    (originals / "val" / "img.bin").write_bytes(b"\x01" * 12)

    class Indexed:
        """Writes an index beside its files on first use, as torchvision's ImageNet does."""

        classes = ["a", "b"]
        transform = target_transform = None

        def __init__(self, root, split="val"):
            if Path(root).resolve() == originals.resolve():
                raise PermissionError(13, "Permission denied", str(originals / "meta.bin"))
            (Path(root) / "meta.bin").write_text("index")
            self.pixels = (Path(root) / split / "img.bin").read_bytes()

        def __len__(self):
            return 3

        def __getitem__(self, i):
            return torch.full((1, 2, 2), self.pixels[i] / 255.0), i % 2

    monkeypatch.setattr(tvd, "Indexed", Indexed, raising=False)
    monkeypatch.setattr(tvd, "__all__", (*tvd.__all__, "Indexed"))
    data = load(registry, "torchvision", Context(cache_dir=tmp_path / "cache"),
                **{"class": "Indexed", "split": "val", "root": str(originals)})
    assert len(data) == 3 and all_of(data)[1].tolist() == [0, 1, 0]
    assert not (originals / "meta.bin").exists()
    assert list((tmp_path / "cache" / "torchvision-staging" / "Indexed").rglob("meta.bin"))
