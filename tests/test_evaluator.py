"""The evaluator's metric families: what ``BenchmarkMeta.kind`` selects, on a fixed model.

A tiny benchmark built here (random uint8 images, multi-hot targets) is scored by a fixed linear
model; every row the evaluator writes must equal the pure metric functions on the same scores.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from cml_bench import metrics
from cml_bench.config import EvalConfig
from cml_bench.evaluator import Evaluator, predict
from cml_bench.metrics import ATTRIBUTE_METRICS, FAMILY_METRICS, MAIN_METRICS
from cml_bench.results import read_manifest, summary_table
from cml_bench.stream import BenchmarkMeta, MultiLabelTensorDataset, make_benchmark

M = 6


def _bench(kind: str, tasks: int = 1, n: int = 24, seed: int = 0, empty_test: tuple[int, ...] = ()):
    """``empty_test``: classes with no positive in the test sets."""
    rng = np.random.default_rng(seed)
    per_task = [tuple(range(k * M // tasks, (k + 1) * M // tasks)) for k in range(tasks)]

    def data(empty=()):
        out = []
        for cols in per_task:
            y = np.zeros((n, M), dtype=np.uint8)
            y[:, list(cols)] = rng.random((n, len(cols))) < 0.4
            y[0, list(cols)] = 1  # every class has a positive
            y[:, list(empty)] = 0
            out.append(MultiLabelTensorDataset(rng.integers(0, 256, (n, 3, 8, 8), dtype=np.uint8), y))
        return out

    meta = BenchmarkMeta(name=f"tiny-{kind}", class_names=tuple(f"c{i}" for i in range(M)),
                         task_classes=tuple(per_task), groups={"minority": (0, 1)} if kind == "continual" else {},
                         task_ids=tuple(range(tasks)), train_class_counts=(1,) * M, kind=kind)
    return make_benchmark(data(), data(empty_test), meta)


class FixedModel(torch.nn.Module):
    """Logits from a fixed random projection of the image (deterministic scores to check against)."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3 * 8 * 8, M)
        torch.nn.init.normal_(self.proj.weight, std=0.05, generator=torch.Generator().manual_seed(1))

    def forward(self, x):
        return self.proj(x.float().flatten(1) / 255.0 - 0.5)


@pytest.mark.parametrize("kind", ["continual", "generic", "attribute"])
def test_rows_are_the_family_metrics_of_the_scores(kind):
    bench, model = _bench(kind), FixedModel()
    evaluator = Evaluator(bench, EvalConfig(), "cpu", run_columns={"benchmark": bench.meta.name})
    seen = evaluator.after_task(model, 0)
    evaluator.finish()
    scores, targets = predict(model, bench.test_stream[0].dataset, 100, "cpu")
    assert set(seen["all"]) - {metrics.CLASSES_DROPPED} == set(FAMILY_METRICS[kind])
    assert (metrics.CLASSES_DROPPED in seen["all"]) == (kind != "attribute")  # attributes drop none
    if kind == "attribute":
        expected = metrics.attribute_metrics(scores, targets)
    else:
        expected = metrics.multilabel_metrics(scores, targets)
        if kind == "generic":
            expected |= metrics.topk_metrics(scores, targets, k=3)
    assert seen["all"] == pytest.approx(expected)
    frame = pd.DataFrame(evaluator.rows)
    assert not frame.metric.str.startswith("forgetting_").any()  # one task: nothing to forget
    assert set(frame.eval_on) == {"task0", "seen"}
    assert set(frame.group) == ({"all", "minority"} if kind == "continual" else {"all"})


def test_continual_rows_are_unchanged_by_the_families():
    """A continual stream still gets exactly mAP, CP/CR/CF1, OP/OR/OF1 per group, and forgetting."""
    bench, model = _bench("continual", tasks=2), FixedModel()
    evaluator = Evaluator(bench, EvalConfig(), "cpu", run_columns={})
    evaluator.after_task(model, 0)
    evaluator.after_task(model, 1)
    evaluator.finish()
    frame = pd.DataFrame(evaluator.rows)
    plain = frame[~frame.metric.str.startswith("forgetting_")]
    assert set(plain.metric) == {*MAIN_METRICS, metrics.CLASSES_DROPPED}
    assert set(frame.metric) - set(plain.metric) == {f"forgetting_{m}" for m in MAIN_METRICS}
    scores, targets = predict(model, bench.test_stream[1].dataset, 100, "cpu")
    row = plain[(plain.trained_through_task == 1) & (plain.eval_on == "task1") & (plain.group == "all")]
    expected = metrics.multilabel_metrics(scores, targets, classes=[3, 4, 5])
    assert dict(zip(row.metric, row.value)) == pytest.approx(expected)


def test_eval_ignore_mask_reaches_task_rows_and_the_seen_union():
    """``eval_ignore`` (one mask or None per test task) is left out of every metric."""
    bench, model = _bench("continual", tasks=2), FixedModel()
    scores, targets = predict(model, bench.test_stream[0].dataset, 100, "cpu")
    # ignore the highest-scoring negatives of task 0's classes: they change every count they are in
    mask = np.zeros(scores.shape, dtype=bool)
    cols = list(bench.meta.task_classes[0])
    masked_scores = np.where(targets[:, cols] == 0, scores[:, cols], -1.0)
    mask[:, cols] = masked_scores >= np.sort(masked_scores.ravel())[-5]
    bench.eval_ignore = [mask, None]
    evaluator = Evaluator(bench, EvalConfig(threshold=float(np.median(scores))), "cpu", run_columns={})
    evaluator.after_task(model, 0)
    seen = evaluator.after_task(model, 1)
    frame = pd.DataFrame(evaluator.rows)

    def rows(through: int, eval_on: str) -> dict[str, float]:
        r = frame[(frame.trained_through_task == through) & (frame.eval_on == eval_on) & (frame.group == "all")]
        return dict(zip(r.metric, r.value))

    t = evaluator.cfg.threshold
    expected = metrics.multilabel_metrics(scores, targets, classes=cols, threshold=t, ignore=mask)
    assert rows(1, "task0") == pytest.approx(expected)
    assert rows(1, "task0") != pytest.approx(metrics.multilabel_metrics(scores, targets, classes=cols, threshold=t))
    scores1, targets1 = predict(model, bench.test_stream[1].dataset, 100, "cpu")
    union = np.concatenate([mask, np.zeros(scores1.shape, dtype=bool)])  # task 1 has no mask
    assert seen["all"] == pytest.approx(metrics.multilabel_metrics(
        np.concatenate([scores, scores1]), np.concatenate([targets, targets1]), threshold=t, ignore=union))


def test_a_class_without_test_positives_is_dropped_from_its_rows_and_counted():
    """As PRS: a class with no positive in the evaluated test set leaves every metric of that row; each
    (eval_on, group) records how many in a ``classes_dropped`` row, which is neither forgotten nor shown."""
    bench, model = _bench("continual", tasks=2, empty_test=(4,)), FixedModel()
    evaluator = Evaluator(bench, EvalConfig(), "cpu", run_columns={"benchmark": "b", "strategy": "s", "seed": 0})
    evaluator.after_task(model, 0)
    evaluator.after_task(model, 1)
    evaluator.finish()
    frame = pd.DataFrame(evaluator.rows)
    last = frame[frame.trained_through_task == 1]

    def rows(eval_on: str, group: str = "all") -> dict[str, float]:
        r = last[(last.eval_on == eval_on) & (last.group == group)]
        return dict(zip(r.metric, r.value))

    assert [rows(e)[metrics.CLASSES_DROPPED] for e in ("task0", "task1", "seen")] == [0.0, 1.0, 1.0]
    assert rows("seen", "minority")[metrics.CLASSES_DROPPED] == 0.0
    scores, targets = predict(model, bench.test_stream[1].dataset, 100, "cpu")
    expected = metrics.multilabel_metrics(scores, targets, classes=[3, 5])  # class 4 left out of every metric
    assert rows("task1") == pytest.approx(expected | {metrics.CLASSES_DROPPED: 1.0})
    assert not frame.metric.str.contains("forgetting_classes_dropped").any()
    assert "classes_dropped" not in summary_table(frame)


def test_unknown_kind_is_a_clear_error():
    with pytest.raises(ValueError, match="kind 'weird'; expected one of continual, generic, attribute"):
        Evaluator(_bench("weird"), EvalConfig(), "cpu", run_columns={})


def test_summary_shows_the_family_metrics():
    for kind, header in (("generic", "| group | mAP | CP | CR | CF1 | OP | OR | OF1 | CP@3 |"),
                         ("attribute", "| group | mA | Accu | Prec | Recall | F1 |"),
                         ("continual", "| group | CF1 | OF1 | mAP |")):
        evaluator = Evaluator(_bench(kind), EvalConfig(), "cpu",
                              run_columns={"benchmark": "b", "strategy": "s", "seed": 0})
        evaluator.after_task(FixedModel(), 0)
        text = summary_table(pd.DataFrame(evaluator.rows))
        assert text.startswith(header) and "| overall |" in text


def test_generic_single_task_run_end_to_end(tiny_layer, tmp_path):
    """A generic stream through the runner: one experience, several epochs, the 13 generic metrics."""
    from cml_bench.runner import resolve_config, run

    config = resolve_config(tiny_layer, {
        "model": {"backbone": "resnet10t", "pretrained": False, "feature_level": 1, "stem_pool": False},
        "train": {"epochs": 2, "batch_size": 8},
        "eval": {"every": None}})  # the synth defaults turn anytime rows on; only the family's rows here
    result = run(config, tmp_path, benchmark=_bench("generic", n=16), log=lambda *a, **k: None)
    frame = pd.read_csv(result.path / "metrics.csv")
    assert set(frame.metric) == {*FAMILY_METRICS["generic"], metrics.CLASSES_DROPPED}
    assert read_manifest(result.path)["benchmark_kind"] == "generic"  # the leaderboard's family
    assert len(FAMILY_METRICS["generic"]) == 13
    assert frame.value.dropna().between(0, 100).all()
    assert "CF1@3" in result.summary and ATTRIBUTE_METRICS[0] not in result.summary.split("|")


def test_leaderboard_has_a_table_per_family_and_plots_only_for_continual(tmp_path):
    from cml_bench.leaderboard import write_leaderboard
    from cml_bench.results import CSV_COLUMNS

    for kind in ("generic", "attribute"):
        for seed in (0, 1):
            bench = _bench(kind, seed=seed)
            evaluator = Evaluator(bench, EvalConfig(), "cpu",
                                  run_columns={"benchmark": bench.meta.name, "strategy": "finetune", "seed": seed})
            evaluator.after_task(FixedModel(), 0)
            evaluator.finish()
            run_dir = tmp_path / bench.meta.name / "finetune" / f"seed{seed}-20260101-000000"
            run_dir.mkdir(parents=True)
            pd.DataFrame(evaluator.rows, columns=CSV_COLUMNS).to_csv(run_dir / "metrics.csv", index=False)
    text = write_leaderboard(tmp_path, out_dir=tmp_path / "board")
    assert "| strategy | overall mA | overall Accu | overall Prec | overall Recall | overall F1 |" in text
    assert "| strategy | overall mAP | overall CF1 | overall OF1 | overall CF1@3 | overall OF1@3 |" in text
    assert "plot_stream.png" not in text and not (tmp_path / "board" / "plot_stream.png").exists()
    board = pd.read_csv(tmp_path / "board" / "leaderboard.csv")
    assert {"all_mA", "all_CF1@3"} <= set(board.columns) and set(board.benchmark) == {"tiny-generic", "tiny-attribute"}
