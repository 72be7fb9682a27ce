"""COCOseq: preparation into a memory-mapped store, the ``cocoseq`` benchmark, the ``data`` commands.

Three kinds of checks:
* a tiny fixture tree in the official COCO 2014 layout (annotation files, 32 px placeholder JPEGs)
  with tiny PRS-style id lists: preparation, store contents, memory-mapped reading, a short run;
* the full COCOseq label side rebuilt from the real labels (``../shared``'s labels_cocoseq.json, as
  fake annotation files, no images): every count and group against PROTOCOL.md;
* the errors a user will hit: missing folders and files, a wrong --splits folder, a truncated JPEG,
  a store of another version, an interrupted build, a full disk.
"""
from __future__ import annotations

import argparse
import errno
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import cml_bench.store as store_mod
from benchmarks import cocoseq
from benchmarks.synth_cocoseq import CLASS_NAMES, COCOSEQ_TRAIN_COUNTS
from cml_bench.store import BadImagesError, StoreSpaceError, StoreVersionError, open_store, partial_path

# COCO-like, non-contiguous category ids (matching must go by name), and a category outside the 70.
CATEGORY_ID = {name: 100 + 3 * i for i, name in enumerate(reversed(CLASS_NAMES))}
PERSON = 1
# Tiny stream: (split, task) -> [(image id, folder, class names)]. Task k uses classes 2k, 2k+1.
TASK_NAMES = [CLASS_NAMES[2 * k: 2 * k + 2] for k in range(4)]


def _fixture_rows() -> dict[tuple[str, int], list[tuple[int, str, list[str]]]]:
    rows = {}
    for k, (a, b) in enumerate(TASK_NAMES):
        base = 1000 * (k + 1)
        rows[("train", k)] = [(base + 1, "train2014", [a]), (base + 2, "train2014", [a, b]),
                              (base + 3, "train2014", [b])]
        rows[("test", k)] = [(base + 501, "val2014", [a]), (base + 502, "train2014", [a, b])]
    return rows


def _write_annotations(coco: Path, rows, extra_person: bool = True) -> None:
    """instances_{train,val}2014.json in the official format (images, annotations, categories)."""
    (coco / "annotations").mkdir(parents=True, exist_ok=True)
    categories = [{"id": PERSON, "name": "person"}] + [{"id": i, "name": n} for n, i in CATEGORY_ID.items()]
    for folder in ("train2014", "val2014"):
        images, anns = [], []
        for part in rows.values():
            for image_id, where, names in part:
                if where != folder:
                    continue
                images.append({"id": image_id, "file_name": f"COCO_{folder}_{image_id:012d}.jpg"})
                anns += [{"id": len(anns), "image_id": image_id, "category_id": CATEGORY_ID[n]} for n in names]
                if extra_person:  # a category outside the 70 must be ignored
                    anns.append({"id": len(anns), "image_id": image_id, "category_id": PERSON})
        (coco / "annotations" / f"instances_{folder}.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": categories}))


def _colour(image_id: int) -> tuple[int, int, int]:
    return (image_id % 251, (image_id // 7) % 251, 128)


def _write_splits(prs: Path, rows, groups: dict[str, list[str]]) -> Path:
    splits = prs / "COCOseq"
    (splits / "ids").mkdir(parents=True)
    (splits / "multihot_map.json").write_text(json.dumps({n: i for i, n in enumerate(CLASS_NAMES)}))
    for (split, k), part in rows.items():
        (splits / "ids" / f"{split}_task{k}_id_coco.json").write_text(json.dumps([r[0] for r in part]))
    (prs / "groups").mkdir()
    for g, names in groups.items():
        (prs / "groups" / f"cocoseq_{g}.json").write_text(json.dumps(names))
    return splits


def make_tree(root: Path) -> tuple[Path, Path]:
    """A COCO root (annotations + 32 px solid-colour JPEGs) and a PRS splits folder under ``root``."""
    rows = _fixture_rows()
    coco = root / "coco"
    _write_annotations(coco, rows)
    for part in rows.values():
        for image_id, folder, _ in part:
            (coco / folder).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (32, 24), _colour(image_id)).save(coco / folder / f"COCO_{folder}_{image_id:012d}.jpg")
    # Published lists for the fixture: airplane "published" as majority though it has 2 images.
    groups = {"majority": ["airplane"], "moderate": [], "minority": [n for n in CLASS_NAMES if n != "airplane"]}
    return coco, _write_splits(root / "prs", rows, groups)


@pytest.fixture
def tree(tmp_path) -> tuple[Path, Path]:
    return make_tree(tmp_path)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[Path, cocoseq.CocoseqReport]:
    root = tmp_path_factory.mktemp("cocoseq")
    coco, splits = make_tree(root)
    report = cocoseq.prepare(coco, splits, root / "store", size=32, chunk_rows=4)
    return root / "store", report


# ---------------------------------------------------------------------------- fixture tree: prepare


def test_prepare_counts_labels_and_report(prepared):
    out, report = prepared
    assert report.count("train") == [3, 3, 3, 3] and report.count("test") == [2, 2, 2, 2]
    counts = dict(zip(report.class_names, report.class_counts()))
    assert counts["airplane"] == 2 and counts["apple"] == 2 and counts["bench"] == 0
    assert "person" not in report.class_names
    # the fixture's numbers differ from PROTOCOL.md's, and the report says so, per task
    assert "train task 0: 3 images, PROTOCOL.md: 8,365" in report.mismatches()
    assert any(d.startswith("airplane: 2 training images -> minority") for d in report.group_differences())
    text = report.text()
    assert "| 3 | 3 | 2 |" in text and "PROTOCOL.md check" in text and "written" in text


def test_store_contents_are_memory_mapped_and_right(prepared):
    out, report = prepared
    store = open_store(out, "cocoseq", cocoseq.BUILDER_VERSION)
    assert isinstance(store.images, np.memmap) and store.images.shape == (20, 3, 32, 32)
    assert store.images.dtype == np.uint8 and store.labels.shape == (20, 70)
    index = store.index
    assert index["size"] == 32 and index["info"]["task_order"] == [0, 3, 1, 2]
    assert index["info"]["published_groups"]["majority"] == ["airplane"]
    part = store.part("test", 2)
    assert part["ids"] == [3501, 3502] and part["num_images"] == 2 and part["bad"] == []
    for row, image_id in zip(range(part["start"], part["stop"]), part["ids"]):
        # solid colours survive JPEG and the resize to within a few levels
        assert np.abs(store.images[row].reshape(3, -1).mean(axis=1) - _colour(image_id)).max() < 4
        names = {CLASS_NAMES[c] for c in np.flatnonzero(store.labels[row])}
        assert names == ({TASK_NAMES[2][0]} if image_id == 3501 else set(TASK_NAMES[2]))
    assert not partial_path(out).exists()


def test_benchmark_streams_tasks_in_paper_order_from_the_map(prepared):
    out, _ = prepared
    bench = cocoseq.build(cocoseq.CocoseqOptions(root=str(out)))
    meta = bench.meta
    assert meta.task_ids == (0, 3, 1, 2) and meta.default_buffer_size == 2000 and meta.memory_rho == -0.03
    assert meta.task_classes[1] == (6, 7)  # stream position 1 is original task 3: classes 6, 7
    assert meta.groups["majority"] == (0,) and len(meta.groups["minority"]) == 69
    assert sum(meta.train_class_counts) == 16
    dataset = bench.train_stream[1].dataset
    x, y, t = dataset[0]
    assert x.dtype.__str__() == "torch.uint8" and tuple(x.shape) == (3, 32, 32) and int(t) == 1
    assert y[6] == 1 and y.sum() == 1
    assert isinstance(bench.store.images, np.memmap)


def test_memmap_rows_read_one_row_and_pickle_without_data(prepared):
    import pickle

    out, _ = prepared
    rows = store_mod.MemmapRows(out / "images.npy", np.array([5, 2]))
    first = rows[0]
    assert first.flags.writeable and first.shape == (3, 32, 32)
    assert np.array_equal(first, np.load(out / "images.npy", mmap_mode="r")[5])
    assert len(pickle.dumps(rows)) < 1000  # path and row numbers only, never the pixels


def test_prepare_again_reuses_the_complete_store(prepared, tmp_path):
    out, report = prepared
    mtime = (out / "images.npy").stat().st_mtime_ns
    coco, splits = Path(report.paths[("train", 0)][0]).parents[1], Path(report.groups_dir).parent / "COCOseq"
    again = cocoseq.prepare(coco, splits, out, size=32, chunk_rows=4)
    assert "reused" in again.store_note and (out / "images.npy").stat().st_mtime_ns == mtime


def test_short_training_run_on_the_store(prepared, tmp_path):
    from cml_bench.runner import resolve_config, run

    out, _ = prepared
    config = resolve_config({
        "benchmark": {"name": "cocoseq", "options": {"root": str(out)}},
        "strategy": {"name": "prs"},
        "model": {"backbone": "resnet10t", "pretrained": False, "feature_level": 3, "stem_pool": False},
        "eval": {"batch_size": 50},
    })
    assert config.train.lr == 1e-4 and config.train.grad_clip_value == 5.0  # PRS set-up defaults
    result = run(config, tmp_path / "results", log=lambda *a, **k: None)
    frame = pd.read_csv(result.path / "metrics.csv")
    assert set(frame.trained_through_task) == {0, 1, 2, 3}
    assert {"majority", "minority"} <= set(frame.group)


def test_cocoseq_defaults_are_the_prs_setup():
    from cml_bench.registry import BENCHMARKS

    spec = BENCHMARKS.get("cocoseq")
    assert spec.defaults["model"] == {"backbone": "resnet101", "pretrained": True, "feature_level": -1,
                                      "stem_pool": True}
    assert spec.defaults["train"] == {"optimizer": "adam", "lr": 1e-4, "weight_decay": 1e-5,
                                      "grad_clip_value": 5.0}


# ---------------------------------------------------------------------------- real labels (shared/)


def test_full_label_side_from_real_labels_matches_protocol(shared_dir, tmp_path):
    """Fake annotation files carrying the real COCOseq labels; the real id lists and group lists."""
    prs = shared_dir / "data" / "prs_splits"
    real = json.loads((prs / "COCOseq" / "labels_cocoseq.json").read_text())
    names = real["classes"]
    rows = {(split, int(k)): [(i, folder, [names[c] for c in cols]) for i, folder, cols in entries]
            for split in ("train", "test") for k, entries in real[split].items()}
    _write_annotations(tmp_path, rows)
    report = cocoseq.inspect(tmp_path, prs / "COCOseq")

    assert report.count("train") == list(cocoseq.PROTOCOL_TRAIN) == [8365, 7814, 11603, 7290]
    assert report.count("test") == list(cocoseq.PROTOCOL_TEST) == [1960, 1690, 1400, 1316]
    assert report.mismatches() == [] and report.group_differences() == []
    assert len({i for k in range(4) for i in report.ids[("test", k)]}) == 6366
    counts = dict(zip(report.class_names, report.class_counts().tolist()))
    assert report.class_names == list(CLASS_NAMES)
    assert [counts[n] for n in CLASS_NAMES] == list(COCOSEQ_TRAIN_COUNTS)
    assert (counts["boat"], counts["kite"], counts["laptop"]) == (900, 898, 198)
    derived = report.derived_groups()
    assert {g: len(v) for g, v in derived.items()} == {"majority": 18, "moderate": 38, "minority": 14}
    assert {g: set(v) for g, v in derived.items()} == {g: set(v) for g, v in report.published_groups.items()}
    assert "boat" in derived["majority"] and "kite" in derived["moderate"] and "laptop" in derived["minority"]
    # every image's label row is exactly its real label set (name matching through shuffled category ids)
    for split in ("train", "test"):
        for k, entries in real[split].items():
            got = report.labels[(split, int(k))]
            want = np.zeros_like(got)
            for row, (_, _, cols) in enumerate(entries):
                want[row, cols] = 1
            assert np.array_equal(got, want)
    assert "all counts match" in report.text()


# ---------------------------------------------------------------------------- errors


def test_missing_coco_root_and_annotation_file(tree, tmp_path):
    coco, splits = tree
    with pytest.raises(FileNotFoundError, match="COCO root .*nope.* does not exist"):
        cocoseq.inspect(tmp_path / "nope", splits)
    (coco / "annotations" / "instances_val2014.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"expected '.*annotations/instances_val2014.json'"):
        cocoseq.inspect(coco, splits)


def test_missing_image_folder_is_named(tree, tmp_path):
    coco, splits = tree
    shutil.rmtree(coco / "val2014")
    with pytest.raises(FileNotFoundError, match="Image folder '.*val2014' not found"):
        cocoseq.prepare(coco, splits, tmp_path / "store", size=32)


def test_wrong_splits_folder(tree, tmp_path):
    coco, splits = tree
    with pytest.raises(ValueError, match="pass --splits .*COCOseq"):
        cocoseq.inspect(coco, splits.parent)
    with pytest.raises(FileNotFoundError, match="multihot_map.json is missing"):
        cocoseq.inspect(coco, coco)
    with pytest.raises(FileNotFoundError, match="splits folder .* does not exist"):
        cocoseq.inspect(coco, tmp_path / "nothing")
    (splits / "ids" / "test_task3_id_coco.json").unlink()
    with pytest.raises(FileNotFoundError, match="test_task3_id_coco.json"):
        cocoseq.inspect(coco, splits)


def test_missing_group_lists_stop_prepare_but_not_inspect(tree, tmp_path):
    coco, splits = tree
    shutil.rmtree(splits.parent / "groups")
    assert "not found" in cocoseq.inspect(coco, splits).text()
    with pytest.raises(FileNotFoundError, match="--groups DIR"):
        cocoseq.prepare(coco, splits, tmp_path / "store", size=32)


def test_truncated_jpeg_is_counted_listed_and_skipped_on_request(tree, tmp_path):
    coco, splits = tree
    bad = coco / "train2014" / "COCO_train2014_000000002002.jpg"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    out = tmp_path / "store"
    with pytest.raises(BadImagesError, match=r"^1 image\(s\) .*COCO_train2014_000000002002.jpg.*--skip-bad-images"):
        cocoseq.prepare(coco, splits, out, size=32, chunk_rows=4)
    assert not out.exists()  # nothing published
    report = cocoseq.prepare(coco, splits, out, size=32, chunk_rows=4, skip_bad_images=True)
    assert [b["id"] for b in report.bad_images] == [2002] and "1 bad image(s)" in report.text()
    store = open_store(out)
    assert store.part("train", 1)["num_images"] == 2 and len(store.rows("train", 1)) == 2
    bench = cocoseq.build(cocoseq.CocoseqOptions(root=str(out)))
    assert len(bench.train_stream[2].dataset) == 2  # stream position 2 is task 1


def test_store_of_another_version(tree, tmp_path):
    coco, splits = tree
    out = tmp_path / "store"
    cocoseq.prepare(coco, splits, out, size=32)
    index = json.loads((out / "index.json").read_text())
    index["builder_version"] = 0
    (out / "index.json").write_text(json.dumps(index))
    with pytest.raises(StoreVersionError, match="version 0.*data prepare cocoseq.*--force"):
        cocoseq.build(cocoseq.CocoseqOptions(root=str(out)))
    with pytest.raises(FileExistsError, match="--force"):
        cocoseq.prepare(coco, splits, out, size=32)
    cocoseq.prepare(coco, splits, out, size=32, force=True)
    mine = tmp_path / "my-folder"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="is not a store"):
        cocoseq.prepare(coco, splits, mine, size=32, force=True)
    assert (mine / "thesis.tex").is_file()
    assert open_store(out, "cocoseq", cocoseq.BUILDER_VERSION).index["builder_version"] == cocoseq.BUILDER_VERSION


def test_benchmark_without_store_says_how_to_prepare(tmp_path):
    with pytest.raises(ValueError, match="data prepare cocoseq"):
        cocoseq.build(cocoseq.CocoseqOptions())
    with pytest.raises(FileNotFoundError, match="data prepare cocoseq"):
        cocoseq.build(cocoseq.CocoseqOptions(root=str(tmp_path / "missing")))


def test_interrupted_build_resumes_after_the_last_chunk(tree, tmp_path):
    coco, splits = tree
    out = tmp_path / "store"

    def stop_after_first_chunk(done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cocoseq.prepare(coco, splits, out, size=32, chunk_rows=4, progress=stop_after_first_chunk)
    assert not out.exists() and json.loads((partial_path(out) / "progress.json").read_text())["rows_done"] == 4
    with pytest.raises(FileNotFoundError, match="interrupted build"):
        open_store(out)
    seen: list[int] = []
    report = cocoseq.prepare(coco, splits, out, size=32, chunk_rows=4, progress=lambda d, t: seen.append(d))
    assert seen == [8, 12, 16, 20] and "resumed from row 4" in report.store_note
    fresh = cocoseq.prepare(coco, splits, tmp_path / "fresh", size=32, chunk_rows=20)
    assert np.array_equal(open_store(out).images, open_store(tmp_path / "fresh").images)
    assert fresh.store_note.endswith("written") and not partial_path(out).exists()


@pytest.mark.parametrize("fail_at_call", [1, 3])
def test_disk_full_leaves_nothing_that_looks_valid(tree, tmp_path, monkeypatch, fail_at_call):
    coco, splits = tree
    out = tmp_path / "store"
    calls = []
    real_write = store_mod._write_rows

    def full_disk(*args):
        calls.append(1)
        if len(calls) >= fail_at_call:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(*args)

    monkeypatch.setattr(store_mod, "_write_rows", full_disk)
    with pytest.raises(StoreSpaceError, match="No space left.*nothing was kept") as info:
        cocoseq.prepare(coco, splits, out, size=32, chunk_rows=4)
    assert info.value.errno == errno.ENOSPC
    assert not out.exists() and not partial_path(out).exists()
    with pytest.raises(FileNotFoundError):
        cocoseq.build(cocoseq.CocoseqOptions(root=str(out)))


# ---------------------------------------------------------------------------- command line


def _main_with_data(monkeypatch):
    """``cli.main`` with the ``data`` command present (added to cli.py by its owner)."""
    from cml_bench import cli
    from cml_bench.data_cli import add_data_parser

    build = cli.build_parser

    def with_data() -> argparse.ArgumentParser:
        parser = build()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        if "data" not in sub.choices:
            add_data_parser(sub)
        return parser

    monkeypatch.setattr(cli, "build_parser", with_data)
    return cli.main


def test_cli_prepare_and_inspect(tree, tmp_path, monkeypatch, capsys):
    main = _main_with_data(monkeypatch)
    coco, splits = tree
    args = ["--coco-root", str(coco), "--splits", str(splits)]
    assert main(["data", "inspect", "cocoseq", *args]) == 0
    assert "| 0 | 3 | 2 |" in capsys.readouterr().out
    assert main(["data", "prepare", "cocoseq", *args, "--out", str(tmp_path / "s"), "--size", "32"]) == 0
    out = capsys.readouterr().out
    assert "PROTOCOL.md check" in out and "benchmark.options.root=" in out
    assert main(["data", "inspect", "cocoseq", "--coco-root", str(tmp_path / "nope"), "--splits", str(splits)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: COCO root") and err.count("\n") == 1
