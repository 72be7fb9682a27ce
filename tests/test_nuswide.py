"""NUS-WIDE: ``nuswideseq`` (PRS) and the single-task ``nuswide`` stream, from the official layout.

A tiny fixture tree in the official NUS-WIDE format (ImageList/, TrainTestLabels/, Concepts81.txt,
Flickr/<concept>/<file>.jpg with 24 px placeholder JPEGs) and tiny PRS-style id lists (row indices
into the image lists): preparation, the corrupt label value, missing images (counted per task, in
the store's index and in the run folder), unreadable images, a short run of each stream. The real
NUSWIDEseq id and group lists in ``../shared`` are checked against PROTOCOL.md's numbers, also read
through official-size label files with random labels; no real NUS-WIDE labels or images exist here.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from benchmarks import nuswide
from cml_bench.metrics import FAMILY_METRICS
from cml_bench.metrics import CLASSES_DROPPED
from cml_bench.prepared import read_prs_lists
from cml_bench.store import BadImagesError, StoreVersionError, open_store

# Concepts81.txt of the fixture (the real file has 81); the stream's map uses 12 of them, in
# another order, so columns must be matched by name.
CONCEPTS = ["airport", "animal", "beach", "birds", "boats", "book", "bridge", "buildings", "cars", "castle",
            "clouds", "fire", "fish", "flags"]
CLASSES = ["fire", "beach", "birds", "boats", "book", "bridge", "buildings", "cars", "clouds", "fish", "flags",
           "animal"]
N_TRAIN, N_TEST = 24, 15
CORRUPT = ("beach", 1, "-1130179")  # (concept, train row, value): row 1 is in train task 0
MISSING = (("train", 7), ("test", 9))  # rows whose image file is absent: train task 2, test task 4


def _train_labels(row: int) -> list[str]:
    """Task k's train rows are 3k..3k+2 (task k has classes 2k, 2k+1); rows 18.. are in no task."""
    k = row // 3
    if k < 6:
        return [CLASSES[2 * k]] if row % 3 == 0 else [CLASSES[2 * k], CLASSES[2 * k + 1]] if row % 3 == 1 \
            else [CLASSES[2 * k + 1]]
    return ["airport", "castle"] if row % 2 else []  # outside the stream; one without any label


def _test_labels(row: int) -> list[str]:
    """Test task k is test rows 2k, 2k+1; rows 12.. are in no task."""
    k = row // 2
    return [CLASSES[2 * k], CLASSES[2 * k + 1]] if k < 6 else ["airport"]


def _file(split: str, row: int) -> tuple[str, str]:
    return CONCEPTS[row % len(CONCEPTS)], f"{row:04d}_{(1000 if split == 'train' else 5000) + row}.jpg"


def _colour(split: str, row: int) -> tuple[int, int, int]:
    return (row * 9 % 251, 40 if split == "train" else 200, 128)


def make_tree(root: Path) -> tuple[Path, Path]:
    """A NUS-WIDE root in the official layout and a NUSWIDEseq-like splits folder under ``root``."""
    nus = root / "NUS-WIDE"
    (nus / "ImageList").mkdir(parents=True)
    (nus / "TrainTestLabels").mkdir()
    (nus / "Concepts81.txt").write_text("\n".join(CONCEPTS) + "\n")
    for split, n, labels_of, name in (("train", N_TRAIN, _train_labels, "Train"),
                                      ("test", N_TEST, _test_labels, "Test")):
        lines = []
        for row in range(n):
            folder, file = _file(split, row)
            # the train list as relative Windows paths, the test list as full ones: both are read
            lines.append(f"{folder}\\{file}" if split == "train" else f"C:\\ImageData\\Flickr\\{folder}\\{file}")
            if (split, row) not in MISSING:
                (nus / "Flickr" / folder).mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (24, 20), _colour(split, row)).save(nus / "Flickr" / folder / file)
        (nus / "ImageList" / f"{name}Imagelist.txt").write_text("\r\n".join(lines) + "\r\n")
        for concept in CONCEPTS:
            values = ["1" if concept in labels_of(row) else "0" for row in range(n)]
            if split == "train" and concept == CORRUPT[0]:
                values[CORRUPT[1]] = CORRUPT[2]
            (nus / "TrainTestLabels" / f"Labels_{concept}_{name}.txt").write_text("\n".join(values) + "\n")
    splits = root / "prs" / "NUSWIDEseq"
    (splits / "ids").mkdir(parents=True)
    (splits / "multihot_map.json").write_text(json.dumps({n: i for i, n in enumerate(CLASSES)}))
    for k in range(6):
        (splits / "ids" / f"train_task{k}_id_nuswide.json").write_text(json.dumps([3 * k + 2, 3 * k, 3 * k + 1]))
        (splits / "ids" / f"test_task{k}_id_nuswide.json").write_text(json.dumps([2 * k, 2 * k + 1]))
    (root / "prs" / "groups").mkdir()
    groups = {"majority": ["fire"], "moderate": [], "minority": CLASSES[1:]}
    for g, names in groups.items():
        (root / "prs" / "groups" / f"nuswideseq_{g}.json").write_text(json.dumps(names))
    return nus, splits


@pytest.fixture
def tree(tmp_path) -> tuple[Path, Path]:
    return make_tree(tmp_path)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("nuswide")
    nus, splits = make_tree(root)
    seq = nuswide.prepare_seq(nus, splits, root / "seq", size=32, chunk_rows=4)
    single = nuswide.prepare_single(nus, root / "single", size=32, chunk_rows=8)
    return root, seq, single


def _tiny_run(name: str, store: Path, out: Path, **train):
    from cml_bench.runner import resolve_config, run

    config = resolve_config({
        "benchmark": {"name": name, "options": {"root": str(store)}},
        "strategy": {"name": "prs" if name == "nuswideseq" else "finetune"},
        "model": {"backbone": "resnet10t", "pretrained": False, "feature_level": 3, "stem_pool": False},
        "train": train,
        "eval": {"batch_size": 50},
    })
    return config, run(config, out, log=lambda *a, **k: None)


# ---------------------------------------------------------------------------- nuswideseq


def test_seq_labels_by_name_and_the_corrupt_value(prepared):
    _, report, _ = prepared
    assert report.class_names == CLASSES
    assert report.count("train") == [3] * 6 and report.count("test") == [2] * 6
    # train task 0 is rows [2, 0, 1]; row 1 carries fire and beach, but beach's value is corrupt
    fire, beach = CLASSES.index("fire"), CLASSES.index("beach")
    assert report.labels[("train", 0)][:, [fire, beach]].tolist() == [[0, 1], [1, 0], [1, 0]]
    assert report.label_notes == ["Labels_beach_Train.txt line 2 (train image row 1, in task 0): value "
                                  "'-1130179' is not 0 or 1; read as 0"]
    text = report.text()
    assert "Label files: 1 value(s) corrected" in text and "-1130179" in text
    assert "train task 0: 3 images, PROTOCOL.md: 17,672" in report.mismatches()
    assert any(d.startswith("fire: 2 training images -> minority") for d in report.group_differences())


def test_seq_missing_images_are_counted_per_task_not_fatal(prepared):
    root, report, _ = prepared
    assert [(b["split"], b["task"], b["id"], b["reason"]) for b in report.bad_images] == \
        [("train", 2, 7, "missing"), ("test", 4, 9, "missing")]
    assert report.left_out("train") == [0, 0, 1, 0, 0, 0] and report.left_out("test") == [0, 0, 0, 0, 1, 0]
    text = report.text()
    assert "| 2 | 3 | 2 | 2 | 2 |" in text  # task 2: 3 train ids, 2 images; 2 test ids, 2 images
    assert "2 bad image(s) left out of the store (2 missing on disk, 0 unreadable" in text
    assert "train, per task: 0: 0 (0 missing), 1: 0 (0 missing), 2: 1 (1 missing)" in text
    store = open_store(root / "seq", "nuswideseq", nuswide.BUILDER_VERSION)
    assert store.part("train", 2)["num_images"] == 2 and store.part("train", 2)["bad"][0]["id"] == 7
    assert store.index["info"]["label_notes"] == report.label_notes


def test_seq_store_and_benchmark(prepared):
    root, _, _ = prepared
    bench = nuswide.build_seq(nuswide.NuswideseqOptions(root=str(root / "seq")))
    meta = bench.meta
    assert meta.task_ids == (3, 1, 0, 5, 4, 2) and meta.memory_rho == 0.02 and meta.default_buffer_size == 2000
    assert meta.kind == "continual" and meta.groups["majority"] == (0,) and len(meta.groups["minority"]) == 11
    assert meta.task_classes[0] == (6, 7)  # stream position 0 is original task 3
    assert [len(e.dataset) for e in bench.train_stream] == [3, 3, 3, 3, 3, 2]  # task 2 (last) lost one image
    assert [len(e.dataset) for e in bench.test_stream] == [2, 2, 2, 2, 1, 2]
    store = bench.store
    part = store.part("test", 1)
    for row, test_row in zip(range(part["start"], part["stop"]), part["ids"]):
        assert np.abs(store.images[row].reshape(3, -1).mean(axis=1) - _colour("test", test_row)).max() < 4


def test_seq_short_run_records_the_missing_images(prepared, tmp_path):
    root, _, _ = prepared
    config, result = _tiny_run("nuswideseq", root / "seq", tmp_path / "results")
    assert config.train.lr == 1e-4 and config.train.grad_clip_value == 5.0  # PRS set-up defaults
    frame = pd.read_csv(result.path / "metrics.csv")
    assert set(frame.trained_through_task) == set(range(6)) and {"majority", "minority"} <= set(frame.group)
    data = json.loads((result.path / "manifest.json").read_text())["data"]
    assert data["left_out_images"] == {"missing": 2} and data["left_out_per_part"] == {"train task 2": 1,
                                                                                        "test task 4": 1}
    left_out = pd.read_csv(result.path / data["left_out_file"])
    assert left_out[["split", "task", "id", "reason"]].values.tolist() == [["train", 2, 7, "missing"],
                                                                            ["test", 4, 9, "missing"]]


def test_real_nuswideseq_id_and_group_lists_match_protocol(shared_dir):
    """The PRS release's lists (no NUS-WIDE labels exist here): counts, order, groups, id ranges."""
    prs = shared_dir / "data" / "prs_splits"
    names, ids, published, _ = read_prs_lists(prs / "NUSWIDEseq", None, nuswide.SEQ)
    assert len(names) == 49
    assert [len(ids[("train", k)]) for k in range(6)] == list(nuswide.SEQ.train_counts)
    assert [len(ids[("test", k)]) for k in range(6)] == list(nuswide.SEQ.test_counts)
    assert {g: len(v) for g, v in published.items()} == dict(nuswide.SEQ.group_sizes)
    assert sorted(n for v in published.values() for n in v) == sorted(names)
    # row indices into the official lists: TrainImagelist has 161,789 lines, TestImagelist 107,859
    assert max(max(ids[("train", k)]) for k in range(6)) < 161789
    assert max(max(ids[("test", k)]) for k in range(6)) < 107859
    # the corrupt official value (Labels_lake_Train.txt line 78,372) is in no NUSWIDEseq task
    assert all(78371 not in ids[("train", k)] for k in range(6))


@pytest.mark.slow
def test_full_size_label_side_with_the_real_id_lists(shared_dir, tmp_path):
    """Official-size image lists and label files (random labels: no real ones exist here) with the real
    NUSWIDEseq id lists: every count matches PROTOCOL.md, and the official corrupt value at its real
    place (Labels_lake_Train.txt line 78,372) is reported as outside the stream."""
    prs = shared_dir / "data" / "prs_splits"
    names = list(json.loads((prs / "NUSWIDEseq" / "multihot_map.json").read_text()))
    nus = tmp_path / "NUS-WIDE"
    (nus / "ImageList").mkdir(parents=True)
    (nus / "TrainTestLabels").mkdir()
    (nus / "Concepts81.txt").write_text("\n".join(sorted(names)))
    rng = np.random.default_rng(0)
    for n, name in ((161789, "Train"), (107859, "Test")):
        (nus / "ImageList" / f"{name}Imagelist.txt").write_text("".join(f"c\\{i}.jpg\r\n" for i in range(n)))
        for concept in names:
            values = np.where(rng.random(n) < 0.1, "1", "0").astype("U8")
            if (concept, name) == ("lake", "Train"):
                values[78371] = "-1130179"
            (nus / "TrainTestLabels" / f"Labels_{concept}_{name}.txt").write_text("\n".join(values))
    report = nuswide.inspect_seq(nus, prs / "NUSWIDEseq")
    assert report.count("train") == list(nuswide.SEQ.train_counts)
    assert report.count("test") == list(nuswide.SEQ.test_counts)
    assert not [m for m in report.mismatches() if "images, PROTOCOL.md" in m or "published group" in m]
    assert report.label_notes == ["Labels_lake_Train.txt line 78,372 (train image row 78,371, in no NUSWIDEseq "
                                  "task): value '-1130179' is not 0 or 1; read as 0"]


# ---------------------------------------------------------------------------- nuswide (single task)


def test_single_official_split(prepared):
    root, _, report = prepared
    assert report.class_names == CONCEPTS and report.count("train") == [N_TRAIN] and report.count("test") == [N_TEST]
    assert report.label_notes == ["Labels_beach_Train.txt line 2 (train image row 1): value '-1130179' is not 0 "
                                  "or 1; read as 0"]
    text = report.text()
    assert "Images without any label: train 3, test 0 (kept" in text
    assert "14 classes, PROTOCOL.md: 81" in report.mismatches()
    bench = nuswide.build_single(nuswide.NuswideOptions(root=str(root / "single")))
    meta = bench.meta
    assert meta.kind == "generic" and meta.num_tasks == 1 and meta.task_classes == (tuple(range(14)),)
    assert meta.groups == {} and len(bench.train_stream[0].dataset) == N_TRAIN - 1
    assert open_store(root / "single").index["size"] == 32


def test_single_short_multi_epoch_run(prepared, tmp_path):
    root, _, _ = prepared
    config, result = _tiny_run("nuswide", root / "single", tmp_path / "results", epochs=2, batch_size=8)
    assert config.model.backbone == "resnet10t" and config.train.epochs == 2
    frame = pd.read_csv(result.path / "metrics.csv")
    assert set(frame.trained_through_task) == {0} and set(frame.group) == {"all"}
    assert set(frame.metric) == {*FAMILY_METRICS["generic"], CLASSES_DROPPED}  # the generic family: top-3 rows too
    assert 0 <= frame[(frame.metric == "mAP") & (frame.eval_on == "seen")].value.item() <= 100
    assert (result.path / "left_out_images.csv").is_file()


# ---------------------------------------------------------------------------- errors


def test_missing_root_files_and_folders_are_named(tree, tmp_path):
    nus, splits = tree
    with pytest.raises(FileNotFoundError, match="NUS-WIDE root .*nope.* does not exist"):
        nuswide.inspect_single(tmp_path / "nope")
    (nus / "TrainTestLabels" / "Labels_fish_Test.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"'fish' not found: expected '.*TrainTestLabels/Labels_fish_Test.txt'"):
        nuswide.inspect_seq(nus, splits)
    (nus / "ImageList" / "TestImagelist.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"image list .*expected '.*ImageList/TestImagelist.txt'"):
        nuswide.inspect_single(nus)


def test_labels_under_groundtruth_and_missing_image_folder(tree, tmp_path):
    nus, splits = tree
    (nus / "Groundtruth").mkdir()
    shutil.move(nus / "TrainTestLabels", nus / "Groundtruth" / "TrainTestLabels")  # as Groundtruth.zip unpacks
    assert nuswide.inspect_seq(nus, splits).count("train") == [3] * 6
    shutil.rmtree(nus / "Flickr")
    with pytest.raises(FileNotFoundError, match="image folder '.*Flickr' not found"):
        nuswide.prepare_seq(nus, splits, tmp_path / "store", size=32)


def test_label_file_of_another_length_and_ids_beyond_the_list(tree):
    nus, splits = tree
    (nus / "TrainTestLabels" / "Labels_fire_Train.txt").write_text("0\n1\n")
    with pytest.raises(ValueError, match="has 2 values but the train image list has 24"):
        nuswide.inspect_seq(nus, splits)
    (nus / "TrainTestLabels" / "Labels_fire_Train.txt").write_text("\n".join(["0"] * N_TRAIN))
    (splits / "ids" / "test_task5_id_nuswide.json").write_text(json.dumps([10, 99]))
    with pytest.raises(ValueError, match=r"1 id\(s\) of test task 5 are not rows of the test image list"):
        nuswide.inspect_seq(nus, splits)
    listing = nus / "ImageList" / "TrainImagelist.txt"
    lines = listing.read_text().splitlines()
    listing.write_text("\n".join(lines[:2] + [""] + lines[2:]))  # a blank line would shift every label
    with pytest.raises(ValueError, match=r"TrainImagelist.txt' line 3: expected <concept_dir>"):
        nuswide.inspect_single(nus)


def test_wrong_splits_folder(tree, tmp_path):
    nus, splits = tree
    with pytest.raises(ValueError, match="pass --splits .*NUSWIDEseq"):
        nuswide.inspect_seq(nus, splits.parent)
    coco = tmp_path / "COCOseq"
    (coco / "ids").mkdir(parents=True)
    (coco / "multihot_map.json").write_text("{}")
    (coco / "ids" / "train_task0_id_coco.json").write_text("[]")
    with pytest.raises(ValueError, match=r"id lists of another stream \(\*_id_coco.json\)"):
        nuswide.inspect_seq(nus, coco)
    (splits / "multihot_map.json").write_text(json.dumps({n: i for i, n in enumerate(CLASSES + ["volcano"])}))
    with pytest.raises(ValueError, match="not NUS-WIDE concepts of Concepts81.txt: \\['volcano'\\]"):
        nuswide.inspect_seq(nus, splits)


def test_truncated_image_stops_unless_skipped(tree, tmp_path):
    nus, splits = tree
    folder, file = _file("train", 4)
    bad = nus / "Flickr" / folder / file
    bad.write_bytes(bad.read_bytes()[:60])
    out = tmp_path / "store"
    with pytest.raises(BadImagesError, match=rf"^1 image\(s\) .*{file}.*--skip-bad-images"):
        nuswide.prepare_seq(nus, splits, out, size=32, chunk_rows=4)
    assert not out.exists()
    report = nuswide.prepare_seq(nus, splits, out, size=32, chunk_rows=4, skip_bad_images=True)
    assert sorted(b["reason"].split(":")[0] for b in report.bad_images) == ["missing", "missing", "unreadable"]
    assert "3 bad image(s) left out of the store (2 missing on disk, 1 unreadable or truncated)" in report.text()


def test_store_of_another_version_and_no_store(tree, tmp_path):
    nus, _ = tree
    with pytest.raises(ValueError, match="data prepare nuswide "):
        nuswide.build_single(nuswide.NuswideOptions())
    with pytest.raises(FileNotFoundError, match="data prepare nuswideseq"):
        nuswide.build_seq(nuswide.NuswideseqOptions(root=str(tmp_path / "none")))
    out = tmp_path / "store"
    nuswide.prepare_single(nus, out, size=16)
    index = json.loads((out / "index.json").read_text())
    index["builder_version"] = 0
    (out / "index.json").write_text(json.dumps(index))
    with pytest.raises(StoreVersionError, match="version 0.*data prepare nuswide .*--force"):
        nuswide.build_single(nuswide.NuswideOptions(root=str(out)))
    with pytest.raises(StoreVersionError, match="builder 'nuswide'.*reads builder 'nuswideseq'"):
        nuswide.build_seq(nuswide.NuswideseqOptions(root=str(out)))


# ---------------------------------------------------------------------------- command line


def test_cli_inspect_and_prepare(tree, tmp_path, capsys):
    from cml_bench.cli import main

    nus, splits = tree
    assert main(["data", "inspect", "nuswideseq", "--nuswide-root", str(nus), "--splits", str(splits)]) == 0
    assert "| 0 | 3 | 2 |" in capsys.readouterr().out
    out = tmp_path / "s"
    assert main(["data", "prepare", "nuswide", "--nuswide-root", str(nus), "--out", str(out),
                 "--image-size", "16"]) == 0
    printed = capsys.readouterr().out
    assert "--benchmark nuswide --set benchmark.options.root=" in printed and "-1130179" in printed
    assert open_store(out).index["size"] == 16
    assert main(["data", "inspect", "nuswide", "--nuswide-root", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: NUS-WIDE root") and err.count("\n") == 1
