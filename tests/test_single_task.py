"""The single-task generic streams ``coco2014`` and ``voc2007``: preparation, benchmark, commands.

* tiny fixture trees in the official layouts (COCO 2014 annotation files and image folders; a
  VOCdevkit with the 20 class files per image set and JPEGImages), 32 px placeholder JPEGs:
  preparation, store contents, the one-experience benchmark and a short multi-epoch run on each;
* the COCO 2014 label side rebuilt from the real image-level labels (``../shared``'s
  coco2014_labels.json, as fake annotation files): 80 classes, 82,081 / 40,504 images;
* the errors a user will hit (the store's own errors -- versions, interruption, full disk -- are
  tested once, in test_cocoseq.py, through the same code).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from benchmarks import coco2014, voc2007
from cml_bench.cli import main
from cml_bench.config import EvalConfig
from cml_bench.evaluator import Evaluator, predict
from cml_bench.metrics import CLASSES_DROPPED, FAMILY_METRICS, multilabel_metrics, topk_metrics
from cml_bench.registry import BENCHMARKS
from cml_bench.single_task import StoreOptions
from cml_bench.store import BadImagesError, open_store
from helpers import COCO_CATEGORIES, COCO_IMAGES, colour, make_coco_tree, make_voc_tree, write_coco_annotations


@pytest.fixture(scope="module")
def coco_store(tmp_path_factory) -> tuple[Path, Path, coco2014.SingleTaskReport]:
    root = tmp_path_factory.mktemp("coco2014")
    coco = make_coco_tree(root)
    return coco, root / "store", coco2014.prepare(coco, root / "store", size=32, chunk_rows=3)


@pytest.fixture(scope="module")
def voc_store(tmp_path_factory) -> tuple[Path, Path, voc2007.SingleTaskReport]:
    root = tmp_path_factory.mktemp("voc2007")
    devkit = make_voc_tree(root)
    return devkit, root / "store", voc2007.prepare(devkit, root / "store", size=32)


def _bench(name: str, root: str | None):
    return BENCHMARKS.get(name).build(StoreOptions(root=root))


def _short_run(name: str, store: Path, out: Path) -> pd.DataFrame:
    from cml_bench.runner import resolve_config, run

    config = resolve_config({
        "benchmark": {"name": name, "options": {"root": str(store)}},
        "strategy": {"name": "finetune"},
        "model": {"backbone": "resnet10t", "pretrained": False, "feature_level": 3, "stem_pool": False},
        "train": {"epochs": 2, "batch_size": 4},
        "eval": {"batch_size": 50},
    })
    assert config.model.backbone == "resnet10t" and config.train.epochs == 2
    result = run(config, out, log=lambda *a, **k: None)
    return pd.read_csv(result.path / "metrics.csv")


# ---------------------------------------------------------------------------- coco2014 on the fixture


def test_coco_prepare_counts_and_rows(coco_store):
    coco, out, report = coco_store
    assert report.class_names == ["person", "bicycle", "dog", "zebra", "toothbrush"]  # category-id order
    assert report.splits["train"].ids == [11, 12, 14, 15, 16]  # 13 has no annotation: left out
    assert report.splits["test"].ids == [21, 22, 23, 24]  # 22 has none: kept, all negative
    assert report.class_counts("train").tolist() == [3, 1, 2, 1, 1]  # a category twice in an image counts once
    assert report.mismatches() == ["5 classes, the papers' numbers (DLFL 4.1.1, ML-GCN): 80",
                                   "train: 5 images, the papers' numbers (DLFL 4.1.1, ML-GCN): 82,081",
                                   "test: 4 images, the papers' numbers (DLFL 4.1.1, ML-GCN): 40,504"]
    text = report.text()
    assert "| train | 5 | 1.60 |" in text and "6 images listed, 1 without any annotation left out" in text
    assert "4 images listed, all kept; 1 without any annotation" in text and "written" in text

    store = open_store(out, "coco2014", coco2014.BUILDER_VERSION)
    assert store.images.shape == (9, 3, 32, 32) and store.ignore is None
    part = store.part("test", 0)
    assert part["ids"] == [21, 22, 23, 24] and part["class_counts"] == [1, 1, 1, 1, 1]
    assert store.labels[part["start"] + 1].sum() == 0
    for row, image_id in zip(range(part["start"], part["stop"]), part["ids"]):
        assert np.abs(store.images[row].reshape(3, -1).mean(axis=1) - colour(image_id)).max() < 4
    assert store.index["info"]["expected"] == {"classes": 80, "train": 82081, "test": 40504}


def test_coco_benchmark_is_one_generic_experience(coco_store):
    _, out, _ = coco_store
    bench = _bench("coco2014", str(out))
    meta = bench.meta
    assert (meta.kind, meta.num_tasks, meta.task_classes, dict(meta.groups)) == ("generic", 1, ((0, 1, 2, 3, 4),), {})
    assert meta.train_class_counts == (3, 1, 2, 1, 1) and bench.eval_ignore is None
    assert len(bench.train_stream[0].dataset) == 5 and len(bench.test_stream[0].dataset) == 4
    x, y, t = bench.train_stream[0].dataset[1]
    assert tuple(x.shape) == (3, 32, 32) and y.tolist() == [1, 0, 1, 0, 0] and int(t) == 0


def test_coco_short_multi_epoch_run(coco_store, tmp_path):
    _, out, _ = coco_store
    frame = _short_run("coco2014", out, tmp_path / "results")
    assert set(frame.trained_through_task) == {0} and set(frame.eval_on) == {"task0", "seen"}
    assert set(frame.group) == {"all"} and set(frame.metric) == {*FAMILY_METRICS["generic"], CLASSES_DROPPED}
    m_ap = frame[(frame.metric == "mAP") & (frame.eval_on == "seen")].value
    assert len(m_ap) == 1 and 0 < float(m_ap.iloc[0]) <= 100


def test_coco_prepare_again_reuses_the_store(coco_store):
    coco, out, _ = coco_store
    assert "reused" in coco2014.prepare(coco, out, size=32).store_note


# ---------------------------------------------------------------------------- coco2014 on the real labels


def test_real_coco2014_labels_give_the_published_counts(shared_dir, tmp_path, capsys):
    """Fake annotation files carrying the real image-level labels of every annotated COCO 2014 image.

    The labels file lists only images with at least one annotation; the real instances files also
    list 702 train2014 and 367 val2014 images without any (82,783 / 40,504 images), added here as
    placeholder ids.
    """
    real = json.loads((shared_dir / "data" / "coco2014_labels.json").read_text())
    names = real["classes"]
    category_id = {n: 1000 - 7 * c for c, n in enumerate(names)}  # ids order != alphabetical order
    images = {}
    for folder, unlabelled in (("train2014", 702), ("val2014", 367)):
        rows = [(int(i), [category_id[names[c]] for c in cols]) for i, cols in real[folder].items()]
        top = max(i for i, _ in rows)
        images[folder] = rows + [(top + 1 + k, []) for k in range(unlabelled)]
    write_coco_annotations(tmp_path, images, {i: n for n, i in category_id.items()})

    assert main(["data", "inspect", "coco2014", "--coco-root", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "COCO 2014: single task, 80 classes" in text
    assert "| train | 82,081 |" in text and "| test | 40,504 |" in text
    assert "train2014: 82,783 images listed, 702 without any annotation left out" in text
    assert "val2014: 40,504 images listed, all kept; 367 without any annotation" in text
    assert "all counts match" in text

    report = coco2014.inspect(tmp_path)
    assert report.mismatches() == [] and sorted(report.class_names) == names
    for split, folder in (("train", "train2014"), ("test", "val2014")):
        want = np.zeros(80, np.int64)
        for cols in real[folder].values():
            want[cols] += 1
        got = dict(zip(report.class_names, report.class_counts(split)))
        assert [got[n] for n in names] == want.tolist()


# ---------------------------------------------------------------------------- voc2007 on the fixture


def test_voc_prepare_counts_difficult_and_store(voc_store):
    devkit, out, report = voc_store
    assert report.class_names == list(voc2007.CLASSES) and (report.count("train"), report.count("test")) == (6, 4)
    assert report.splits["train"].ids[:2] == ["000005", "000007"]
    assert int(report.class_counts("train")[14]) == 3 and int(report.ignored_counts("train")[14]) == 1
    text = report.text()
    assert "train (trainval): 2 difficult (image, class) pairs in 2 images" in text
    assert "test (test): 2 difficult (image, class) pairs in 2 images; 1 image(s) with difficult labels only" in text
    assert re.search(r"\n  person +3 +1  \(\+1 / \+1\)\n", text)
    assert "train: 6 images, the papers' numbers (DLFL 4.1.1, VOC 2007): 5,011" in report.mismatches()

    store = open_store(out, "voc2007", voc2007.BUILDER_VERSION)
    assert store.ignore is not None and store.ignore.shape == store.labels.shape == (10, 20)
    first = store.part("train", 0)["start"]  # 000005: chair positive, person difficult
    assert np.flatnonzero(store.labels[first]).tolist() == [8] and np.flatnonzero(store.ignore[first]).tolist() == [14]


def test_voc_benchmark_difficult_positive_in_training_ignored_in_evaluation(voc_store):
    _, out, _ = voc_store
    bench = _bench("voc2007", str(out))
    assert bench.meta.kind == "generic" and bench.meta.num_tasks == 1
    _, y, _ = bench.train_stream[0].dataset[0]  # 000005: chair positive, person difficult -> both targets
    assert np.flatnonzero(y.numpy()).tolist() == [8, 14]
    _, y, _ = bench.test_stream[0].dataset[1]  # 000002: train positive, person difficult -> negative
    assert np.flatnonzero(y.numpy()).tolist() == [18]
    (mask,) = bench.eval_ignore
    assert mask.dtype == bool and mask.shape == (4, 20)
    assert [np.flatnonzero(r).tolist() for r in mask] == [[], [14], [], [8]]


def test_voc_run_metrics_leave_the_difficult_pairs_out(voc_store, tmp_path):
    """A voc2007 run's rows are the generic metrics of its final model with the difficult pairs ignored."""
    from cml_bench.models import build_model
    from cml_bench.runner import resolve_config, run

    _, out, _ = voc_store
    config = resolve_config({
        "benchmark": {"name": "voc2007", "options": {"root": str(out)}},
        "strategy": {"name": "finetune"},
        "model": {"backbone": "resnet10t", "pretrained": False, "feature_level": 3, "stem_pool": False},
        "train": {"epochs": 2, "batch_size": 4},
        "eval": {"batch_size": 50},
    })
    result = run(config, tmp_path / "results", log=lambda *a, **k: None)
    frame = pd.read_csv(result.path / "metrics.csv")
    assert set(frame.metric) == {*FAMILY_METRICS["generic"], CLASSES_DROPPED}  # the top-3 rows too
    bench = _bench("voc2007", str(out))
    model = build_model(config.model, bench.meta.num_classes)
    model.load_state_dict(torch.load(result.path / "model.pt"))
    scores, targets = predict(model, bench.test_stream[0].dataset, 50, "cpu")
    (mask,) = bench.eval_ignore
    expected = multilabel_metrics(scores, targets, ignore=mask) | topk_metrics(scores, targets, k=3, ignore=mask)
    for eval_on in ("task0", "seen"):
        rows = frame[(frame.eval_on == eval_on) & (frame.group == "all")]
        assert dict(zip(rows.metric, rows.value)) == pytest.approx(expected)


def test_voc_evaluator_difficult_pairs_are_neither_predictions_nor_positives(voc_store):
    """Every label predicted: the difficult test pairs are neither predictions nor positives. The 4 test
    positives fall in 4 classes; the other 16 have no positive and are dropped (PRS), leaving 16
    predictions, one of them a difficult pair: OP 4/15, not 4/16."""
    _, out, _ = voc_store
    bench = _bench("voc2007", str(out))

    class Everything(torch.nn.Module):
        def forward(self, x):
            return torch.full((len(x), 20), 4.0)

    seen = Evaluator(bench, EvalConfig(), "cpu", run_columns={}).after_task(Everything(), 0)
    assert seen["all"]["OP"] == pytest.approx(100 * 4 / 15) and seen["all"]["OR"] == 100
    assert seen["all"][CLASSES_DROPPED] == 16
    targets = np.stack([y.numpy() for _, y, _ in bench.test_stream[0].dataset])
    assert multilabel_metrics(np.full((4, 20), 0.98), targets)["OP"] == pytest.approx(100 * 4 / 16)  # unmasked


# ---------------------------------------------------------------------------- errors and commands


def test_coco_errors_name_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="COCO root .*nope.* does not exist"):
        coco2014.inspect(tmp_path / "nope")
    coco = make_coco_tree(tmp_path)
    (coco / "annotations" / "instances_val2014.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"expected '.*annotations/instances_val2014.json'"):
        coco2014.inspect(coco)
    write_coco_annotations(coco, {"val2014": COCO_IMAGES["val2014"]}, {**COCO_CATEGORIES, 91: "hair brush"})
    with pytest.raises(ValueError, match="category lists .* differ"):
        coco2014.inspect(coco)
    write_coco_annotations(coco, COCO_IMAGES, COCO_CATEGORIES)
    for image in (coco / "val2014").iterdir():
        image.unlink()
    (coco / "val2014").rmdir()
    with pytest.raises(FileNotFoundError, match=r"Image folder '.*val2014' not found: unzip .*val2014.zip"):
        coco2014.prepare(coco, tmp_path / "store", size=32)
    with pytest.raises(ValueError, match="root is not set.*data prepare coco2014"):
        _bench("coco2014", None)


def test_coco_truncated_image_stops_unless_skipped(tmp_path):
    coco = make_coco_tree(tmp_path)
    bad = coco / "val2014" / "COCO_val2014_000000000023.jpg"
    bad.write_bytes(bad.read_bytes()[:60])
    with pytest.raises(BadImagesError, match=r"^1 image\(s\) .*000000000023.jpg.*--skip-bad-images"):
        coco2014.prepare(coco, tmp_path / "store", size=32)
    report = coco2014.prepare(coco, tmp_path / "store", size=32, skip_bad_images=True)
    assert [b["id"] for b in report.bad_images] == [23] and "1 bad image(s)" in report.text()
    bench = _bench("coco2014", str(tmp_path / "store"))
    assert len(bench.test_stream[0].dataset) == 3
    assert report.count("test") == 3 and "| test | 3 |" in report.text()  # the images kept, not those listed


def test_voc_difficult_flags_are_part_of_the_store_inputs(tmp_path):
    devkit = make_voc_tree(tmp_path)
    voc2007.prepare(devkit, tmp_path / "store", size=16)
    sofa = devkit / "VOC2007" / "ImageSets" / "Main" / "sofa_trainval.txt"
    sofa.write_text(sofa.read_text().replace("000007 -1", "000007  0"))  # only a difficult flag changes
    with pytest.raises(FileExistsError, match="built from other inputs.*--force"):
        voc2007.prepare(devkit, tmp_path / "store", size=16)
    voc2007.prepare(devkit, tmp_path / "store", size=16, force=True)
    assert open_store(tmp_path / "store").ignore[1].nonzero()[0].tolist() == [17]


def test_voc_root_layouts_and_errors(tmp_path):
    devkit = make_voc_tree(tmp_path)
    assert voc2007.inspect(devkit / "VOC2007").count("test") == 4  # the VOC2007 folder itself works too
    with pytest.raises(FileNotFoundError, match="VOC root .* does not exist"):
        voc2007.inspect(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="is not a VOCdevkit folder"):
        voc2007.inspect(tmp_path)
    main_dir = devkit / "VOC2007" / "ImageSets" / "Main"
    (main_dir / "sofa_test.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"expected '.*sofa_test.txt' \(from VOCtest_06-Nov-2007.tar"):
        voc2007.inspect(devkit)
    (main_dir / "sofa_test.txt").write_text("000001 -1\n000002 -1\n000004 2\n000006 -1\n")
    with pytest.raises(ValueError, match=r"sofa_test.txt' line 3: expected '<image id> <1\|-1\|0>', got '000004 2'"):
        voc2007.inspect(devkit)
    (main_dir / "sofa_test.txt").write_text("000001 -1\n000002 -1\n")
    with pytest.raises(ValueError, match="sofa_test.txt' lists other images than aeroplane_test.txt"):
        voc2007.inspect(devkit)


def test_cli_inspect_and_prepare(tmp_path, capsys):
    devkit = make_voc_tree(tmp_path)
    assert main(["data", "inspect", "voc2007", "--voc-root", str(devkit)]) == 0
    assert "PASCAL VOC 2007: single task, 20 classes" in capsys.readouterr().out
    coco = make_coco_tree(tmp_path)
    assert main(["data", "prepare", "coco2014", "--coco-root", str(coco), "--out", str(tmp_path / "s"),
                 "--image-size", "24"]) == 0
    out = capsys.readouterr().out
    assert "Check against the papers' numbers" in out and "--benchmark coco2014 --set benchmark.options.root=" in out
    assert open_store(tmp_path / "s").index["size"] == 24
    assert main(["data", "inspect", "voc2007", "--voc-root", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: VOC root") and err.count("\n") == 1
