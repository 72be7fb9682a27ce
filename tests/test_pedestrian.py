"""Pedestrian-attribute streams (pa100k, rap_zs, peta_zs): preparation, the benchmarks, the errors.

* tiny fixture trees in the official formats, written here: PA-100K's ``annotation.mat`` (MATLAB
  cells, via scipy) with JPEGs of pedestrian shape, and Jia et al.'s zero-shot split pickles
  (EasyDict objects pickled with protocol 3, as their code writes them) beside PNG folders;
* preparation, store contents and a short multi-epoch training run on each;
* the real PA-100K images and annotation.mat of ``../shared/data/pa100k_mini`` (slow test);
* the errors a user will hit.
"""
from __future__ import annotations

import errno
import os
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import cml_bench.store as store_mod
from benchmarks import pedestrian
from cml_bench.metrics import ATTRIBUTE_METRICS
from cml_bench.store import BadImagesError, StoreVersionError, open_store, partial_path

SMALL = (32, 24)  # stored height x width in the fixture tests (the default is 256 x 192)
PA_COUNTS = {"train": 6, "val": 2, "test": 3}


def _colour(i: int) -> tuple[int, int, int]:
    return (37 * i % 251, 91 * i % 251, 200)


def _image(path: Path, i: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (30 + i % 5, 80 + i % 7), _colour(i)).save(path)  # W x H, pedestrian-shaped


def _labels(n: int, m: int, seed: int) -> np.ndarray:
    labels = (np.random.default_rng(seed).random((n, m)) < 0.4).astype(np.uint8)
    labels[0, :] = 1  # every attribute has a positive and (row 1) a negative
    labels[1, :] = 0
    return labels


def make_pa100k(root: Path, unnamed_test_row: bool = False) -> Path:
    """PA-100K's layout: annotation.mat (cells of names, uint8 labels, attribute names) and data/."""
    from scipy.io import savemat

    names = [f"Attr{a}" for a in range(26)]
    mat = {"attributes": np.array([[n] for n in names], dtype=object)}
    start = 1
    for k, split in enumerate(("train", "val", "test")):
        files = [f"{start + i:06d}.jpg" for i in range(PA_COUNTS[split])]
        for i, f in enumerate(files):
            _image(root / "data" / f, start + i)
        cells = np.array([[f] for f in files], dtype=object)
        if unnamed_test_row and split == "test":
            cells[0, 0] = np.zeros((0, 0), dtype=np.uint8)  # an empty cell, as MATLAB writes []
        mat[f"{split}_images_name"] = cells
        mat[f"{split}_label"] = _labels(len(files), 26, seed=k)
        start += len(files)
    savemat(root / "annotation.mat", mat)
    return root


class EasyDict(dict):
    """The behaviour of ``easydict.EasyDict`` that matters for pickling: items mirrored as attributes."""

    def __init__(self, d=None, **kwargs):
        super().__init__()
        for k, v in {**(d or {}), **kwargs}.items():
            setattr(self, k, v)

    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        super().__setitem__(name, value)

    __setitem__ = __setattr__


@pytest.fixture
def easydict_module(monkeypatch):
    """Jia et al.'s pickles name ``easydict.EasyDict``; writing one needs that module importable."""
    module = types.ModuleType("easydict")
    module.EasyDict = EasyDict
    EasyDict.__module__ = "easydict"
    monkeypatch.setitem(sys.modules, "easydict", module)
    return module


ZS = {  # dataset -> (description, image folder, attributes in the file, evaluated, partition sizes)
    "rap_zs": ("rap2", "RAP_dataset", 60, 53, {"train": 5, "val": 2, "test": 3}),
    "peta_zs": ("peta", "images", 40, 35, {"train": 4, "val": 3, "test": 2}),
}


def make_zs(root: Path, dataset: str, **overrides) -> Path:
    """A ``dataset_zs_run0.pkl`` laid out like Jia et al.'s format_rap2.py / format_peta.py output."""
    description, folder, n_attr, n_eval, sizes = ZS[dataset]
    n_images = sum(sizes.values()) + 2  # two images of the dataset are in no partition
    names = [f"img{i:05d}.png" for i in range(n_images)]
    labels = _labels(n_images, n_attr, seed=3)
    if dataset == "rap_zs":
        labels[2, -3:] = 2  # RAP's 'uncertain' value, on evaluated attributes
    order = list(range(n_attr))[::-1]
    d = EasyDict()
    d.description = description
    d.reorder = "group_order"
    d.root = f"/mnt/data1/someone/datasets/attribute/{folder}"
    d.image_name = names
    d.label = labels
    d.attr_name = [f"{dataset}-attr{a}" for a in range(n_attr)]
    d.label_idx = EasyDict(eval=order[:n_eval], color=order[n_eval:], extra=range(n_attr, n_attr))
    perm = np.random.default_rng(0).permutation(n_images)
    cuts = np.cumsum([sizes["train"], sizes["val"], sizes["test"]])
    d.partition = EasyDict(train=perm[:cuts[0]], val=perm[cuts[0]:cuts[1]], test=perm[cuts[1]:cuts[2]])
    d.partition.trainval = np.concatenate([d.partition.train, d.partition.val])
    d.weight_train = [labels[d.partition.train].mean(axis=0)]
    for key, value in overrides.items():
        setattr(d, key, value)
    for i, name in enumerate(names):
        _image(root / folder / name, i)
    # the published files were written by numpy 1.x, whose arrays pickle as numpy.core.multiarray
    blob = pickle.dumps(d, protocol=3).replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    assert b"cnumpy.core.multiarray\n_reconstruct" in blob
    (root / "dataset_zs_run0.pkl").write_bytes(blob)
    return root


def _tiny_run(name: str, store: Path, out: Path, **train):
    from cml_bench.runner import resolve_config, run

    config = resolve_config({
        "benchmark": {"name": name, "options": {"root": str(store)}},
        "strategy": {"name": "finetune"},
        "model": {"backbone": "resnet10t", "pretrained": False, "feature_level": 2, "stem_pool": False},
        "train": {"batch_size": 4, **train},
        "eval": {"batch_size": 64},
    })
    return run(config, out, log=lambda *a, **k: None)


def _check_attribute_metrics(frame: pd.DataFrame) -> None:
    assert set(frame.metric) == set(ATTRIBUTE_METRICS)  # all five, and no forgetting rows
    assert set(frame.group) == {"all"} and set(frame.trained_through_task) == {0}
    assert set(frame.eval_on) == {"task0", "seen"}
    assert np.isfinite(frame.value).all() and frame.value.between(0, 100).all()


# ---------------------------------------------------------------------------- PA-100K fixture


@pytest.fixture
def pa_tree(tmp_path) -> Path:
    return make_pa100k(tmp_path / "PA-100K")


def test_pa100k_prepare_store_and_report(pa_tree, tmp_path):
    report = pedestrian.prepare("pa100k", pa_tree, tmp_path / "store", size=SMALL, chunk_rows=4)
    assert [len(report.ids[s]) for s in ("train", "val", "test")] == [6, 2, 3]
    assert report.attribute_names[:2] == ["Attr0", "Attr1"] and len(report.attribute_names) == 26
    assert "train: 6 images, published: 80,000" in report.mismatches()
    assert "| test | 3 | 10,000 |" in report.text()
    store = open_store(tmp_path / "store", "pa100k", pedestrian.BUILDER_VERSION)
    assert store.images.shape == (11, 3, 32, 24) and store.index["size"] == [32, 24]
    part = store.part("val", 0)
    assert part["ids"] == ["000007.jpg", "000008.jpg"]
    for row, i in zip(range(part["start"], part["stop"]), (7, 8)):
        assert np.abs(store.images[row].reshape(3, -1).mean(axis=1) - _colour(i)).max() < 4
    assert np.array_equal(store.labels[part["start"]:part["stop"]], _labels(2, 26, seed=1))


def test_pa100k_benchmark_is_one_attribute_task_trained_on_trainval(pa_tree, tmp_path):
    pedestrian.prepare("pa100k", pa_tree, tmp_path / "store", size=SMALL)
    bench = pedestrian._build("pa100k", pedestrian.PedestrianOptions(root=str(tmp_path / "store")))
    assert bench.meta.kind == "attribute" and bench.meta.num_tasks == 1 and bench.meta.groups == {}
    assert len(bench.train_stream[0].dataset) == 8 and len(bench.test_stream[0].dataset) == 3
    held_out = pedestrian._build("pa100k", pedestrian.PedestrianOptions(
        root=str(tmp_path / "store"), train_split="train", test_split="val"))
    assert len(held_out.train_stream[0].dataset) == 6 and len(held_out.test_stream[0].dataset) == 2
    x, y, t = held_out.test_stream[0].dataset[0]
    assert tuple(x.shape) == (3, 32, 24) and y.shape[0] == 26
    with pytest.raises(ValueError, match="test_split=val needs train_split=train"):
        pedestrian._build("pa100k", pedestrian.PedestrianOptions(root=str(tmp_path / "store"), test_split="val"))


def test_pedestrian_defaults_are_the_paper_setup():
    from cml_bench.registry import BENCHMARKS

    for name in ("pa100k", "rap_zs", "peta_zs"):
        spec = BENCHMARKS.get(name)
        assert spec.defaults["model"]["backbone"] == "resnet50" and spec.defaults["model"]["ssca_modules"] == 3
        assert spec.defaults["train"]["epochs"] == 30 and spec.defaults["train"]["lr"] == 0.01


# ---------------------------------------------------------------------------- zero-shot pickles


@pytest.mark.parametrize("dataset", ["rap_zs", "peta_zs"])
def test_zs_prepare_uses_the_evaluated_attributes_and_partitions(dataset, tmp_path, easydict_module):
    description, folder, n_attr, n_eval, sizes = ZS[dataset]
    root = make_zs(tmp_path / dataset, dataset)
    report = pedestrian.prepare(dataset, root, tmp_path / "store", size=SMALL)
    assert len(report.attribute_names) == n_eval == pedestrian.DATASETS[dataset].num_attributes
    assert report.attribute_names[0] == f"{dataset}-attr{n_attr - 1}"  # label_idx.eval's order
    assert {s: len(report.ids[s]) for s in sizes} == sizes
    with open(root / "dataset_zs_run0.pkl", "rb") as fh:
        raw = pedestrian._ZsUnpickler(fh).load()
    test_idx = raw["partition"]["test"]
    expected = np.where(raw["label"] == 2, 0, raw["label"])[np.ix_(test_idx, raw["label_idx"]["eval"])]
    store = open_store(tmp_path / "store", dataset, pedestrian.BUILDER_VERSION)
    part = store.part("test", 0)
    assert np.array_equal(store.labels[part["start"]:part["stop"]], expected)
    assert part["ids"] == [raw["image_name"][i] for i in test_idx]
    assert store.images.shape[0] == sum(sizes.values())  # images in no partition are not stored
    assert any("value 2" in n for n in report.notes) == (dataset == "rap_zs")
    assert f"{n_eval} evaluated attributes (label_idx.eval) of the {n_attr}" in report.text()


@pytest.mark.parametrize("dataset", ["pa100k", "rap_zs", "peta_zs"])
def test_short_multi_epoch_training_run(dataset, tmp_path, easydict_module):
    root = make_pa100k(tmp_path / "src") if dataset == "pa100k" else make_zs(tmp_path / "src", dataset)
    pedestrian.prepare(dataset, root, tmp_path / "store", size=SMALL)
    result = _tiny_run(dataset, tmp_path / "store", tmp_path / "results", epochs=2)
    frame = pd.read_csv(result.path / "metrics.csv")
    _check_attribute_metrics(frame)
    assert "| group | mA | Accu | Prec | Recall | F1 |" in result.summary and "| overall |" in result.summary
    assert "after task i" not in result.summary  # one task: no task x task matrix


def test_zs_pickle_errors(tmp_path, easydict_module):
    root = make_zs(tmp_path / "rap", "rap_zs")
    with pytest.raises(ValueError, match="describes the 'rap2' dataset, but PETA_ZS"):
        pedestrian.read_zs_split("peta_zs", root)
    with pytest.raises(FileNotFoundError, match="split file not found: expected .*dataset_zs_run3.pkl"):
        pedestrian.read_zs_split("rap_zs", tmp_path / "rap", tmp_path / "rap" / "dataset_zs_run3.pkl")
    five = [np.arange(3)] * 5  # dataset_all.pkl: a list of five random splits per partition
    all_splits = make_zs(tmp_path / "all", "rap_zs", partition=EasyDict(train=five, val=five, test=five))
    with pytest.raises(ValueError, match="five random splits"):
        pedestrian.read_zs_split("rap_zs", all_splits)
    (tmp_path / "evil").mkdir()
    (tmp_path / "evil" / "dataset_zs_run0.pkl").write_bytes(pickle.dumps(os.system))
    with pytest.raises(ValueError, match="not a readable zero-shot split pickle"):
        pedestrian.read_zs_split("peta_zs", tmp_path / "evil")
    (tmp_path / "rap" / "RAP_dataset").rename(tmp_path / "rap" / "elsewhere")
    with pytest.raises(FileNotFoundError, match="RAP_ZS image folder not found"):
        pedestrian.read_zs_split("rap_zs", root)


# ---------------------------------------------------------------------------- errors


def test_missing_folders_and_files_are_named(tmp_path, pa_tree):
    with pytest.raises(FileNotFoundError, match="PA-100K root .* does not exist"):
        pedestrian.read_annotations("pa100k", tmp_path / "nope")
    (pa_tree / "data").rename(pa_tree / "images")
    with pytest.raises(FileNotFoundError, match="PA-100K image folder not found"):
        pedestrian.read_pa100k(pa_tree)
    (pa_tree / "annotation.mat").unlink()
    with pytest.raises(FileNotFoundError, match="annotation.mat"):
        pedestrian.read_pa100k(pa_tree)
    with pytest.raises(ValueError, match="benchmark.options.root is not set"):
        pedestrian._build("pa100k", pedestrian.PedestrianOptions())
    with pytest.raises(FileNotFoundError, match="data prepare pa100k"):
        pedestrian._build("pa100k", pedestrian.PedestrianOptions(root=str(tmp_path / "no-store")))


def test_bad_annotation_mat(tmp_path, pa_tree):
    from scipy.io import loadmat, savemat

    mat = {k: v for k, v in loadmat(pa_tree / "annotation.mat").items() if not k.startswith("__")}
    mat["val_label"][0, 3] = 3
    savemat(pa_tree / "annotation.mat", mat)
    with pytest.raises(ValueError, match="val_label must hold 0 or 1, but 1 entries do"):
        pedestrian.read_pa100k(pa_tree)
    del mat["test_label"]
    savemat(pa_tree / "annotation.mat", mat)
    with pytest.raises(ValueError, match="lacks test_label"):
        pedestrian.read_pa100k(pa_tree)


def test_truncated_image_is_counted_listed_and_skipped_on_request(tmp_path, pa_tree):
    jpeg = pa_tree / "data" / "000003.jpg"
    jpeg.write_bytes(jpeg.read_bytes()[: len(jpeg.read_bytes()) // 2])
    with pytest.raises(BadImagesError, match="1 image.*000003.jpg.*--skip-bad-images"):
        pedestrian.prepare("pa100k", pa_tree, tmp_path / "store", size=SMALL)
    assert not (tmp_path / "store").exists()
    report = pedestrian.prepare("pa100k", pa_tree, tmp_path / "store", size=SMALL, skip_bad_images=True)
    assert [b["id"] for b in report.bad_images] == ["000003.jpg"] and "000003.jpg" in report.text()
    bench = pedestrian._build("pa100k", pedestrian.PedestrianOptions(root=str(tmp_path / "store")))
    assert len(bench.train_stream[0].dataset) == 7
    # the report counts the images kept (train + val = 7), not those annotation.mat lists (8)
    assert "| train | 5 | 80,000 |" in report.text() and "train: 5 images, published" in report.text()


def test_annotation_row_without_file_name_stops_unless_skipped(tmp_path):
    root = make_pa100k(tmp_path / "pa", unnamed_test_row=True)
    with pytest.raises(BadImagesError, match="1 image.* without a file name .*test_images_name row 0"):
        pedestrian.prepare("pa100k", root, tmp_path / "store", size=SMALL)
    report = pedestrian.prepare("pa100k", root, tmp_path / "store", size=SMALL, skip_bad_images=True)
    assert len(report.ids["test"]) == 2 and "test_images_name row 0" in report.text()
    store = open_store(tmp_path / "store")
    assert store.part("test", 0)["ids"] == ["000010.jpg", "000011.jpg"]
    assert store.index["info"]["unnamed_rows"] == ["test_images_name row 0"]


def test_store_of_another_dataset_or_version(tmp_path, pa_tree, monkeypatch):
    pedestrian.prepare("pa100k", pa_tree, tmp_path / "store", size=SMALL)
    with pytest.raises(StoreVersionError, match="builder 'pa100k'.*reads builder 'rap_zs'.*data prepare rap_zs"):
        pedestrian._build("rap_zs", pedestrian.PedestrianOptions(root=str(tmp_path / "store")))
    monkeypatch.setattr(pedestrian, "BUILDER_VERSION", 2)
    with pytest.raises(StoreVersionError, match="--force"):
        pedestrian._build("pa100k", pedestrian.PedestrianOptions(root=str(tmp_path / "store")))
    with pytest.raises(FileExistsError, match="--force"):
        pedestrian.prepare("pa100k", pa_tree, tmp_path / "store", size=SMALL)
    report = pedestrian.prepare("pa100k", pa_tree, tmp_path / "store", size=SMALL, force=True)
    assert report.store_note.endswith("written")


def test_disk_full_leaves_nothing_that_looks_valid(tmp_path, pa_tree, monkeypatch):
    def full(fh, offset, block):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_mod, "_write_rows", full)
    with pytest.raises(store_mod.StoreSpaceError, match="No space left"):
        pedestrian.prepare("pa100k", pa_tree, tmp_path / "store", size=SMALL)
    assert not (tmp_path / "store").exists() and not partial_path(tmp_path / "store").exists()


def test_cli_inspect_prepare_and_one_line_errors(tmp_path, pa_tree, capsys):
    from cml_bench.cli import main

    assert main(["data", "inspect", "pa100k", "--root", str(pa_tree)]) == 0
    out = capsys.readouterr().out
    assert "| train | 6 | 80,000 |" in out and "Image files missing on disk: 0" in out
    out_dir = tmp_path / "s"
    assert main(["data", "prepare", "pa100k", "--root", str(pa_tree), "--out", str(out_dir),
                 "--image-size", "16", "12"]) == 0
    assert "--benchmark pa100k --set benchmark.options.root=" in capsys.readouterr().out
    assert open_store(out_dir).images.shape[2:] == (16, 12)
    assert main(["data", "prepare", "rap_zs", "--root", str(tmp_path / "nope"), "--out", str(out_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: RAP_ZS root") and err.count("\n") == 1


# ---------------------------------------------------------------------------- real PA-100K images


@pytest.mark.slow
def test_real_pa100k_mini_prepares_trains_and_evaluates(shared_dir, tmp_path):
    """The 2,000 real PA-100K images and their annotation.mat: preparation at the default 256 x 192,
    then a few training iterations and an evaluation on the real test images."""
    from cml_bench.runner import resolve_config, run
    from cml_bench.store import MemmapRows
    from cml_bench.stream import MultiLabelTensorDataset, make_benchmark

    root = shared_dir / "data" / "pa100k_mini"
    if not (root / "annotation.mat").is_file():
        pytest.skip("pa100k_mini not present")
    # this copy's test_images_name has an empty first cell: counted, named, skipped on request
    with pytest.raises(BadImagesError, match="test_images_name row 0"):
        pedestrian.prepare("pa100k", root, tmp_path / "store")
    report = pedestrian.prepare("pa100k", root, tmp_path / "store", skip_bad_images=True)
    assert [len(report.ids[s]) for s in ("train", "val", "test")] == [1599, 200, 199]
    assert report.attribute_names[0] == "Female" and len(report.attribute_names) == 26
    assert report.bad_images == []
    store = open_store(tmp_path / "store", "pa100k", pedestrian.BUILDER_VERSION)
    assert store.images.shape == (1998, 3, 256, 192) and store.images[:50].std() > 10  # real pixels
    bench = pedestrian._build("pa100k", pedestrian.PedestrianOptions(root=str(tmp_path / "store")))
    train, test = bench.train_stream[0].dataset, bench.test_stream[0].dataset
    assert len(train) == 1799 and len(test) == 199
    # a few iterations: the first 24 training images (3 steps of 8), all 199 real test images
    rows = store.rows("train", 0)[:24]
    few = MultiLabelTensorDataset(MemmapRows(store.path / "images.npy", rows), np.asarray(store.labels[rows]))
    test_rows = store.rows("test", 0)
    tests = MultiLabelTensorDataset(MemmapRows(store.path / "images.npy", test_rows),
                                    np.asarray(store.labels[test_rows]))
    small = make_benchmark([few], [tests], bench.meta)
    config = resolve_config({
        "benchmark": {"name": "pa100k", "options": {"root": str(tmp_path / "store")}},
        "model": {"backbone": "resnet10t", "pretrained": False},
        "train": {"batch_size": 8, "epochs": 1}, "eval": {"batch_size": 100},
    })
    result = run(config, tmp_path / "results", benchmark=small, log=lambda *a, **k: None)
    frame = pd.read_csv(result.path / "metrics.csv")
    _check_attribute_metrics(frame)
    assert frame[frame.eval_on == "seen"].shape[0] == 5
