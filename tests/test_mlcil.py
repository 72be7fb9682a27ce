"""MLCIL streams (KRT's protocol): sessions, label absence, seen-class test sets, average mAP.

* the protocol's pure functions on constructed label matrices;
* every real-data stream (coco-b0c10, coco-b40c10, voc-b0c4, voc-b10c2, coco-mlcil, voc-mlcil) built
  from fixture stores written by the real ``data prepare`` code from fixture trees in the official
  layouts (80 COCO categories whose ids are not in name order; VOC with difficult objects), checked
  image by image against hand-derived answers;
* the evaluator's 'seen' union (each image once), ``avg_mAP`` and the leaderboard's MLCIL family;
* the label-absence strategies (pseudo-label, LwF) against a recomputation from their teacher.
"""
from __future__ import annotations

import copy
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from benchmarks import coco2014, voc2007
from benchmarks.synth_cocoseq import CLASS_NAMES as COCOSEQ_NAMES
from cml_bench import mlcil
from cml_bench.config import EvalConfig
from cml_bench.evaluator import Evaluator, predict
from cml_bench.leaderboard import FAMILY_COLUMNS, final_table, mlcil_compare_rows, write_leaderboard
from cml_bench.metrics import multilabel_metrics
from cml_bench.registry import BENCHMARKS, STRATEGIES
from cml_bench.results import metric_family
from cml_bench.runner import build_benchmark, resolve_config, run
from cml_bench.single_task import StoreOptions
from cml_bench.store import open_store
from helpers import make_coco_tree, make_voc_tree

COCO_NAMES = COCOSEQ_NAMES + ("person", "cup", "cell phone", "wine glass", "knife", "keyboard", "mouse",
                              "microwave", "toaster", "hair drier")
ALPHA = sorted(COCO_NAMES)  # KRT's COCO class order
# category ids in reverse name order (with gaps): the store's columns are then not KRT's order
COCO_IDS = {name: 200 - 2 * k for k, name in enumerate(ALPHA)}
TINY_MLCIL = {"classes": 8, "increment": 2, "train_images": 60, "test_images": 40, "image_size": 32,
              "sprite_min": 5, "sprite_max": 8, "clutter": 1}


def tiny_mlcil_layer(**train) -> dict:
    return {"benchmark": {"name": "synth-mlcil", "options": TINY_MLCIL},
            "train": {"epochs": 2, "batch_size": 8, **train}, "eval": {"batch_size": 256}}


# ---------------------------------------------------------------------------- the protocol's functions


def test_session_classes_of_the_presets():
    assert [len(s) for s in mlcil.session_classes(range(80), 0, 10)] == [10] * 8
    assert [len(s) for s in mlcil.session_classes(range(80), 40, 10)] == [40, 10, 10, 10, 10]
    assert [len(s) for s in mlcil.session_classes(range(20), 0, 4)] == [4] * 5
    assert mlcil.session_classes(range(20), 10, 2)[:2] == (tuple(range(10)), (10, 11))
    with pytest.raises(ValueError, match="B0-C3 does not split 20 classes"):
        mlcil.session_classes(range(20), 0, 3)
    with pytest.raises(ValueError, match="twice"):
        mlcil.session_classes([0, 1, 1, 2], 0, 2)


def test_rows_first_session_and_masked_targets():
    labels = np.array([[1, 0, 0, 1], [0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 1, 1]], dtype=np.uint8)
    sessions = ((0, 1), (2, 3))
    rows = mlcil.session_rows(labels, sessions)
    assert [r.tolist() for r in rows] == [[0, 1], [0, 1, 3]]
    assert mlcil.first_session(labels, sessions).tolist() == [0, 0, -1, 1]
    # label absence: in session 1, row 0 keeps class 3 only, row 1 class 2 only
    assert mlcil.session_targets(labels, rows[1], sessions[1]).tolist() == [[0, 0, 0, 1], [0, 0, 1, 0],
                                                                            [0, 0, 1, 1]]


def test_session_average_needs_every_session():
    rows = [{"trained_through_task": t, "eval_on": "seen", "group": "all", "metric": "mAP", "value": v}
            for t, v in enumerate([80.0, 60.0, 40.0])]
    rows.append({"trained_through_task": 2, "eval_on": "task0", "group": "all", "metric": "mAP", "value": 0.0})
    assert mlcil.session_average(rows, 3) == pytest.approx(60.0)
    assert np.isnan(mlcil.session_average(rows[2:], 3))  # a joint run: one evaluation point


# ---------------------------------------------------------------------------- COCO fixture store

def _coco_images() -> dict[str, list[tuple[int, list[int]]]]:
    ids = COCO_IDS
    train = [(100 + s, [ids[ALPHA[10 * s]]]) for s in range(8)]  # one image per B0-C10 session
    train += [(200, [ids["airplane"], ids["zebra"]]),            # sessions 0 and 7
              (201, [ids["apple"], ids["banana"], ids["person"]]),
              (202, [])]                                          # no annotation: in no session
    test = [(300 + s, [ids[ALPHA[10 * s + 1]]]) for s in range(8)]
    test += [(400, [ids["airplane"], ids["zebra"]]), (401, [])]
    return {"train2014": train, "val2014": test}


@pytest.fixture(scope="module")
def coco_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlcil-coco")
    tree = make_coco_tree(root, _coco_images(), {i: n for n, i in COCO_IDS.items()})
    coco2014.prepare(tree, root / "store", size=32)
    return root / "store"


def _ids(dataset, store, split: str) -> list[int]:
    """The image ids of a dataset's rows (through the store's index)."""
    part = store.part(split, 0)
    return [part["ids"][r - part["start"]] for r in dataset.images.rows]


def _names(bench, row: np.ndarray) -> set[str]:
    return {bench.meta.class_names[c] for c in np.flatnonzero(np.asarray(row) > 0.5)}


def test_coco_b0c10_sessions_masking_and_test_sets(coco_store):
    bench = BENCHMARKS.get("coco-b0c10").build(StoreOptions(root=str(coco_store)))
    store = open_store(coco_store, "coco2014", coco2014.BUILDER_VERSION)
    meta = bench.meta
    assert meta.kind == "mlcil" and meta.name == "coco-b0c10" and meta.default_buffer_size == 20 * 80
    # the store's columns follow the category ids (reverse alphabetical here); sessions follow the names
    assert list(meta.class_names) == ALPHA[::-1]
    sessions = [[meta.class_names[c] for c in cols] for cols in meta.task_classes]
    assert sessions == [ALPHA[10 * s:10 * s + 10] for s in range(8)]
    assert sessions[0] == ["airplane", "apple", "backpack", "banana", "baseball bat", "baseball glove",
                           "bear", "bed", "bench", "bicycle"]
    person = next(s for s in range(8) if "person" in sessions[s])
    expected_train = {s: {100 + s} for s in range(8)}
    expected_train[0] |= {200, 201}
    expected_train[7] |= {200}
    expected_train[person] |= {201}
    for s, exp in enumerate(bench.train_stream):
        data = exp.dataset
        ids = _ids(data._datasets[0], store, "train")
        assert set(ids) == expected_train[s] and len(ids) == len(set(ids))
        for k, i in enumerate(ids):  # label absence: only this session's classes are ever positive
            got = _names(bench, data[k][1])
            full = {"airplane", "zebra"} if i == 200 else {"apple", "banana", "person"} if i == 201 else None
            assert got == (full & set(sessions[s]) if full else {ALPHA[10 * s]})
    # test experience j: every test image with a class of session j, full labels
    for s, exp in enumerate(bench.test_stream):
        data = exp.dataset
        ids = _ids(data._datasets[0], store, "test")
        assert set(ids) == {300 + s} | ({400} if s in (0, 7) else set())
        # the 'seen' union takes image 400 from session 0 only (its first session)
        assert sorted(ids[k] for k in bench.seen_rows[s]) == [300 + s] + ([400] if s == 0 else [])
        k400 = [k for k, i in enumerate(ids) if i == 400]
        assert all(_names(bench, data[k][1]) == {"airplane", "zebra"} for k in k400)
    # the multitask union: each image once, full labels; 202 (no annotation) and 401 nowhere
    joint = bench.joint_train
    joint_ids = _ids(joint, store, "train")
    assert sorted(joint_ids) == sorted([100 + s for s in range(8)] + [200, 201])
    assert _names(bench, joint[joint_ids.index(201)][1]) == {"apple", "banana", "person"}


def test_coco_b40c10_and_the_parametrised_family(coco_store):
    bench = BENCHMARKS.get("coco-b40c10").build(StoreOptions(root=str(coco_store)))
    sizes = [len(c) for c in bench.meta.task_classes]
    assert sizes == [40, 10, 10, 10, 10]
    spec = BENCHMARKS.get("coco-mlcil")
    same = spec.build(spec.options(root=str(coco_store), base=40, increment=10))
    assert same.meta.name == "coco-b40c10" and same.meta.task_classes == bench.meta.task_classes
    with pytest.raises(ValueError, match="B0-C7 does not split 80 classes"):
        spec.build(spec.options(root=str(coco_store), increment=7))
    with pytest.raises(ValueError, match="data prepare coco2014"):
        BENCHMARKS.get("coco-b0c10").build(StoreOptions(root=None))


def test_seen_union_counts_each_image_once(coco_store):
    """The evaluator's 'seen' mAP equals KRT's: the test images with a seen class, each once."""
    bench = BENCHMARKS.get("coco-b40c10").build(StoreOptions(root=str(coco_store)))
    store = open_store(coco_store, "coco2014", coco2014.BUILDER_VERSION)

    class Colour(torch.nn.Module):  # scores from the image's colour: a fixed, image-specific ranking
        def forward(self, x):
            mean = x.float().mean((1, 2, 3))[:, None]
            return torch.sin(mean * torch.arange(1, 81, dtype=torch.float32) / 7.0) * 3

    last = bench.meta.num_tasks - 1
    cfg = EvalConfig(threshold=0.8)
    seen = Evaluator(bench, cfg, "cpu", run_columns={}).after_task(Colour(), last)["all"]
    from cml_bench.stream import MultiLabelTensorDataset
    from cml_bench.store import MemmapRows

    rows = store.rows("test", 0)
    labels = np.asarray(store.labels[rows])
    scores, _ = predict(Colour(), MultiLabelTensorDataset(MemmapRows(store.path / "images.npy", rows), labels),
                        100, "cpu")
    keep = labels.any(axis=1)  # every class is seen after the last session
    expected = multilabel_metrics(scores[keep], labels[keep], threshold=0.8)
    assert seen == pytest.approx(expected)
    # counting image 400 twice (it is in sessions 0 and 4) would give another mAP: the check can fail
    twice = np.concatenate([np.flatnonzero(keep), np.flatnonzero(labels[:, list(bench.meta.task_classes[4])].any(1)
                                                               & labels[:, list(bench.meta.task_classes[0])].any(1))])
    assert multilabel_metrics(scores[twice], labels[twice], threshold=0.8)["mAP"] != pytest.approx(expected["mAP"])


# ---------------------------------------------------------------------------- VOC fixture store

def _voc_sets() -> dict[str, dict[str, tuple[list[int], list[int]]]]:
    trainval = {f"{10 + s:06d}": ([4 * s], []) for s in range(5)}  # one image per B0-C4 session
    trainval.update({"000100": ([0], [4]),   # aeroplane; bottle only difficult: not in session 1
                     "000101": ([], [8]),    # chair only difficult: in no session
                     "000102": ([14, 19], []),   # person (session 3), tvmonitor (session 4)
                     "000103": ([10, 18], [])})  # for B10-C2's sessions
    test = {f"{20 + s:06d}": ([4 * s + 1], []) for s in range(5)}
    test.update({"000200": ([5], [0]),       # bus; aeroplane only difficult: a negative, not in session 0
                 "000201": ([11, 15, 19], [])})
    return {"trainval": trainval, "test": test}


@pytest.fixture(scope="module")
def voc_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlcil-voc")
    voc2007.prepare(make_voc_tree(root, _voc_sets()), root / "store", size=32)
    return root / "store"


def test_voc_b0c4_difficult_objects_are_negatives(voc_store):
    bench = BENCHMARKS.get("voc-b0c4").build(StoreOptions(root=str(voc_store)))
    store = open_store(voc_store, "voc2007", voc2007.BUILDER_VERSION)
    assert [list(c) for c in bench.meta.task_classes] == [list(range(4 * s, 4 * s + 4)) for s in range(5)]
    assert bench.meta.default_buffer_size == 100 and bench.eval_ignore is None
    train = [set(_ids(e.dataset._datasets[0], store, "train")) for e in bench.train_stream]
    assert train == [{"000010", "000100"}, {"000011"}, {"000012", "000103"}, {"000013", "000102"},
                     {"000014", "000102", "000103"}]
    session1 = bench.train_stream[1].dataset
    assert all(_names(bench, y) == {"bottle"} for _, y, _ in session1)
    test = [set(_ids(e.dataset._datasets[0], store, "test")) for e in bench.test_stream]
    assert test == [{"000020"}, {"000021", "000200"}, {"000022", "000201"}, {"000023", "000201"},
                    {"000024", "000201"}]
    data = bench.test_stream[1].dataset
    ids = _ids(data._datasets[0], store, "test")
    assert _names(bench, data[ids.index("000200")][1]) == {"bus"}  # the difficult aeroplane is a negative
    joint_ids = set(_ids(bench.joint_train, store, "train"))
    assert "000101" not in joint_ids and len(joint_ids) == 8


def test_voc_b10c2_and_voc_mlcil(voc_store):
    bench = BENCHMARKS.get("voc-b10c2").build(StoreOptions(root=str(voc_store)))
    assert [len(c) for c in bench.meta.task_classes] == [10, 2, 2, 2, 2, 2]
    spec = BENCHMARKS.get("voc-mlcil")
    default = spec.build(spec.options(root=str(voc_store)))
    assert default.meta.name == "voc-b0c4"
    with pytest.raises(ValueError, match=r"session 1 \(classes \[2, 3\]\) has 0 training and 0 test images"):
        spec.build(spec.options(root=str(voc_store), base=2, increment=2))


def test_short_run_on_the_coco_fixture_stream(coco_store, tmp_path):
    config = resolve_config({
        "benchmark": {"name": "coco-b40c10", "options": {"root": str(coco_store)}},
        "strategy": {"name": "finetune"},
        "model": {"backbone": "resnet10t", "pretrained": False, "feature_level": 3, "stem_pool": False,
                  "image_size": 32},
        "train": {"epochs": 2, "batch_size": 4}, "eval": {"batch_size": 50}})
    assert config.eval.threshold == 0.8 and config.train.grad_clip_value is None
    frame = pd.read_csv(run(config, tmp_path, log=lambda *a, **k: None).path / "metrics.csv")
    assert metric_family(frame) == "mlcil"
    seen = frame[(frame.eval_on == "seen") & (frame.metric == "mAP")].sort_values("trained_through_task")
    assert seen.trained_through_task.tolist() == [0, 1, 2, 3, 4]
    avg = frame[frame.metric == "avg_mAP"].value
    assert len(avg) == 1 and avg.iloc[0] == pytest.approx(seen.value.mean())
    assert (frame.metric == "forgetting_mAP").any()


# ---------------------------------------------------------------------------- embedded default, leaderboard

def test_synth_mlcil_shares_images_across_sessions():
    spec = BENCHMARKS.get("synth-mlcil")
    bench = spec.build(spec.options(**TINY_MLCIL))
    joint = np.stack([y.numpy() for _, y in bench.joint_train])
    assert joint.sum(1).min() >= 1 and (joint.sum(1) > 1).mean() > 0.4
    first = mlcil.first_session(joint, bench.meta.task_classes)
    spans = [len({s for s in range(4) if joint[i, list(bench.meta.task_classes[s])].any()}) for i in range(len(joint))]
    assert max(spans) > 1 and (first >= 0).all()  # label absence has something to hide
    for s, exp in enumerate(bench.train_stream):
        y = np.stack([row[1].numpy() for row in exp.dataset])
        outside = np.ones(8, bool)
        outside[list(bench.meta.task_classes[s])] = False
        assert y[:, outside].sum() == 0 and y.sum(1).min() >= 1
    with pytest.raises(ValueError, match="does not split"):
        spec.options(classes=10, increment=4)


def test_leaderboard_has_an_mlcil_family_with_krt_rows(tmp_path):
    out = tmp_path / "runs"
    for strategy in ("finetune", "multitask"):
        run(resolve_config(tiny_mlcil_layer(), {"strategy": {"name": strategy}}), out, log=lambda *a, **k: None)
    text = write_leaderboard(out, tmp_path / "board")
    assert "| strategy | overall avg_mAP | overall mAP | overall CF1 | overall OF1 | overall forgetting_mAP |" in text
    assert "KRT's average mAP" in text
    columns = final_table(pd.read_csv(tmp_path / "board" / "all_metrics.csv"), *FAMILY_COLUMNS["mlcil"]).columns
    krt = mlcil_compare_rows("coco-b0c10", columns)
    assert krt.index.tolist() == [("coco-b0c10", "paper: KRT")]
    assert krt[("all", "avg_mAP", "mean")].iloc[0] == 74.6 and np.isnan(krt[("all", "mAP", "mean")].iloc[0])
    assert mlcil_compare_rows("voc-b10c2", columns)[("all", "mAP", "mean")].iloc[0] == 80.9
    assert mlcil_compare_rows("synth-mlcil", columns).empty


# ---------------------------------------------------------------------------- label-absence strategies

def _two_sessions(strategy: str, probe_hook: str, **options):
    """Train session 0, then session 1 with probes around the strategy's plugin; return what they saw."""
    from cml_bench.models import build_model
    from cml_bench.strategy import StrategyContext
    from cml_bench.training import MultiLabelTemplate

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from avalanche.training.plugins import SupervisedPlugin

    config = resolve_config(tiny_mlcil_layer(epochs=1), {"strategy": {"name": strategy}})
    bench = build_benchmark(config)
    spec = STRATEGIES.get(strategy)
    (plugin,) = spec.build(spec.options(**options), StrategyContext(bench.meta, config.train, 0, "cpu"))
    seen: dict[str, list] = {"before": [], "after": []}

    class Probe(SupervisedPlugin):
        def __init__(self, key: str):
            super().__init__()
            self.key = key

        def record(self, strategy):
            seen[self.key].append((strategy.mb_input.clone(), strategy.mbatch[1].clone(),
                                   float(strategy.loss.detach()) if torch.is_tensor(strategy.loss) else 0.0,
                                   strategy.mb_output.detach().clone()))

    setattr(Probe, probe_hook, lambda self, strategy, **kw: self.record(strategy))
    model = build_model(config.model, bench.meta.num_classes)
    template = MultiLabelTemplate(model=model, cfg=config.train, device="cpu", plugins=[plugin], seed=0)
    template.train(bench.train_stream[0])
    teacher = copy.deepcopy(plugin.teacher)  # the plugin's own is replaced after session 1
    template.plugins.insert(0, Probe("before"))
    template.plugins.append(Probe("after"))
    template.train(bench.train_stream[1])
    return plugin, teacher, bench, seen


def test_pseudo_label_adds_confident_old_classes_only():
    plugin, teacher, bench, seen = _two_sessions("pseudo-label", "after_forward", threshold=0.2)
    old = list(bench.meta.task_classes[0])
    changed = 0
    for (x, y0, _, _), (_, y1, _, _) in zip(seen["before"], seen["after"]):
        confident = (torch.sigmoid(teacher(x)[:, old]) > plugin.threshold).float()
        expected = y0.clone()
        expected[:, old] = torch.maximum(y0[:, old], confident)
        assert torch.equal(y1, expected)
        changed += int((y1 != y0).sum())
        others = [c for c in range(bench.meta.num_classes) if c not in old]
        assert torch.equal(y1[:, others], y0[:, others])
    assert len(seen["after"]) > 2 and changed > 0


def test_lwf_adds_the_old_class_distillation_loss():
    plugin, teacher, bench, seen = _two_sessions("lwf", "before_backward")
    old = list(bench.meta.task_classes[0])
    for (x, _, before, out), (_, _, after, _) in zip(seen["before"], seen["after"]):
        soft = torch.sigmoid(teacher(x)[:, old])
        expected = torch.nn.functional.binary_cross_entropy_with_logits(out.mean(0)[:, old], soft)
        assert after - before == pytest.approx(float(expected), rel=1e-4, abs=1e-6)
        assert after - before > 0


def test_resumed_lwf_run_keeps_its_teacher(tmp_path, monkeypatch):
    """A run stopped after session 1's checkpoint resumes with the same teacher: identical metrics."""
    config = resolve_config(tiny_mlcil_layer(epochs=1), {"strategy": {"name": "lwf"}})
    reference = pd.DataFrame(run(config, tmp_path / "ref", log=lambda *a, **k: None).rows)
    original = Evaluator.after_task

    def stop_in_session_2(self, model, trained_through):
        if trained_through == 2:
            raise RuntimeError("stopped")
        return original(self, model, trained_through)

    monkeypatch.setattr(Evaluator, "after_task", stop_in_session_2)
    with pytest.raises(RuntimeError, match="stopped"):
        run(config, tmp_path / "out", log=lambda *a, **k: None)
    monkeypatch.setattr(Evaluator, "after_task", original)
    messages = []
    resumed = pd.DataFrame(run(config, tmp_path / "out", log=messages.append, resume=True).rows)
    assert any("resuming after task 1" in m for m in messages)
    pd.testing.assert_frame_equal(reference, resumed)
