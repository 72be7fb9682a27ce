"""What a run records besides its end-of-task metrics: anytime evaluation (and A_auc), the replay
memory's composition, scores.npz, the leaderboard's figures of them, and Avalanche's loggers."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cml_bench import leaderboard as lb
from cml_bench.metrics import area_under_curve
from cml_bench.recording import ANYTIME_COLUMNS, AUC_METRIC, MEMORY_COLUMNS
from cml_bench.runner import build_benchmark, resolve_config, run
from cml_bench.scores import load_scores

EVERY = 20


def _config(tiny_layer: dict, strategy: str, seed: int = 0, every: int | None = EVERY):
    return resolve_config(tiny_layer, {"strategy": {"name": strategy}, "seed": seed,
                                       "eval": {"every": every, "anytime_subset": 5}})


@pytest.fixture(scope="module")
def campaign(tmp_path_factory, cache_dir):
    """prs with and without anytime evaluation (same seed), reservoir with it: tiny runs."""
    from conftest import TINY_BENCHMARK

    layer = {"benchmark": {"name": "synth-cocoseq", "options": {**TINY_BENCHMARK, "cache_dir": str(cache_dir)}},
             "eval": {"batch_size": 256}}
    root = tmp_path_factory.mktemp("campaign")
    runs = {name: run(_config(layer, strategy, every=every), root / name, log=lambda *a: None)
            for name, strategy, every in (("plain", "prs", None), ("anytime", "prs", EVERY),
                                          ("reservoir", "reservoir", EVERY))}
    return root, runs, layer


def test_anytime_evaluation_leaves_the_training_trajectory_unchanged(campaign):
    _, runs, _ = campaign
    plain, anytime = pd.DataFrame(runs["plain"].rows), pd.DataFrame(runs["anytime"].rows)
    assert plain.equals(anytime[anytime["metric"] != AUC_METRIC].reset_index(drop=True))
    a, b = load_scores(runs["plain"].path / "scores.npz"), load_scores(runs["anytime"].path / "scores.npz")
    assert a.same_images(b) and np.array_equal(a.scores, b.scores)
    assert not (runs["plain"].path / "anytime.csv").exists()


def test_anytime_rows_and_a_auc(campaign):
    _, runs, _ = campaign
    points = pd.read_csv(runs["anytime"].path / "anytime.csv")
    assert list(points.columns) == ANYTIME_COLUMNS and set(points["eval_on"]) == {"seen"}
    its = sorted(set(points["iteration"]))
    assert all(i % EVERY == 0 for i in its[:-1]) and len(its) >= 3  # every 20 iterations, and the stream's end
    train = sum(len(e.dataset) for e in build_benchmark(resolve_config(campaign[2])).train_stream)
    curve = points[(points["group"] == "all") & (points["metric"] == "mAP")].sort_values("iteration")
    assert curve["samples"].iloc[-1] == train and (np.diff(curve["samples"]) > 0).all()
    assert list(curve["trained_through_task"]) == sorted(curve["trained_through_task"])
    sizes = np.cumsum([len(e.dataset) for e in build_benchmark(resolve_config(campaign[2])).train_stream])
    assert (curve["task_end_samples"] == sizes[curve["trained_through_task"]]).all()
    assert (curve["samples"] <= curve["task_end_samples"]).all()
    rows = pd.DataFrame(runs["anytime"].rows)
    auc = rows[(rows["metric"] == AUC_METRIC) & (rows["group"] == "all")]["value"].item()
    assert auc == pytest.approx(area_under_curve(curve["samples"], curve["value"]))


def test_a_auc_on_a_hand_computed_curve():
    # points every 10 samples, then one at 40: (10 * 20 + 10 * 40 + 20 * 60) / 40
    assert area_under_curve([10, 20, 40], [20.0, 40.0, 60.0]) == 45.0
    assert area_under_curve([5], [70.0]) == 70.0
    with pytest.raises(ValueError, match="increasing"):
        area_under_curve([10, 10], [1.0, 2.0])


def test_memory_csv_counts_groups_and_stream(campaign):
    _, runs, layer = campaign
    memory = pd.read_csv(runs["reservoir"].path / "memory.csv")
    assert list(memory.columns) == MEMORY_COLUMNS and set(memory["point"]) == {"task", "anytime"}
    config = resolve_config(layer)
    meta = build_benchmark(config).meta
    group_of = {c: g for g, cols in meta.groups.items() for c in cols}
    assert (memory["group"] == memory["class"].map(group_of)).all()
    capacity = memory["capacity"].iloc[0]
    for (_, _), snap in memory.groupby(["point", "iteration"]):
        fill, samples = snap["fill"].iloc[0], snap["samples"].iloc[0]
        assert len(snap) == meta.num_classes and fill == min(capacity, samples)  # a reservoir fills every slot first
        assert (snap["count"] <= fill).all() and fill <= snap["count"].sum() <= 4 * fill  # 1-4 labels per image
        assert snap["target"].sum() == pytest.approx(1.0)
    last = memory[(memory["point"] == "task") & (memory["task"] == meta.num_tasks - 1)]
    stream = sum(np.stack([y.numpy() for _, y, *_ in e.dataset]).sum(0) for e in build_benchmark(config).train_stream)
    assert np.array_equal(last.sort_values("class")["seen"].to_numpy(), stream.astype(int))  # n_c of the stream


def test_leaderboard_draws_the_anytime_curve_and_the_memory(campaign, tmp_path):
    root, runs, _ = campaign
    for name in ("anytime", "reservoir"):  # one results folder (the plain run is another config)
        src = runs[name].path
        dst = tmp_path / "results" / src.relative_to(root / name)
        shutil.copytree(src, dst)
    out = tmp_path / "board"
    md = lb.write_leaderboard(tmp_path / "results", out)
    for name in ("plot_anytime.png", "plot_memory_synth-cocoseq.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / name).stat().st_size > 5000
        assert f"]({name})" in md
    shares = pd.read_csv(out / "memory_shares.csv")
    assert set(shares["group"]) == {"majority", "moderate", "minority"} and set(shares["strategy"]) == {"prs", "reservoir"}
    sums = shares.groupby(["strategy", "point", "iteration"])[["memory", "stream", "target"]].sum()
    assert np.allclose(sums, 100.0)
    assert "## Anytime evaluation" in md and "overall A_auc_mAP" in md
    main = md.split("## Anytime evaluation")[0]
    assert "A_auc" not in main  # the final tables keep their columns


@pytest.mark.slow
def test_tensorboard_and_wandb_loggers_read_back(tiny_layer, tmp_path, monkeypatch):
    """One tiny run with both loggers: the event file and the offline wandb run hold the loss of every
    iteration, the evaluator's metrics and the anytime curve."""
    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline by default: no network
    result = run(_config(tiny_layer, "finetune"), tmp_path, log=lambda *a: None, loggers=("tensorboard", "wandb"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(result.path / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    iterations = events.Scalars("train/loss")[-1].step
    assert len(events.Scalars("train/loss")) == iterations and "anytime/all/mAP" in scalars
    final = pd.DataFrame(result.rows).query("eval_on == 'seen' and group == 'all' and metric == 'mAP'")["value"].iloc[-1]
    assert events.Scalars("seen/all/mAP")[-1].value == pytest.approx(final, rel=1e-6)

    (wandb_file,) = (result.path / "wandb").glob("offline-run-*/run-*.wandb")
    history = _wandb_history(wandb_file)
    assert sum("train/loss" in h for h in history) == iterations
    assert sum("anytime/all/mAP" in h for h in history) == len(set(pd.read_csv(result.path / "anytime.csv")["iteration"]))
    assert [h["seen/all/mAP"] for h in history if "seen/all/mAP" in h][-1] == pytest.approx(final)


def _wandb_history(path: Path) -> list[dict]:
    """The history records of an offline wandb run file: LevelDB log blocks of protobuf Records
    (wandb 0.31 has no Python reader of its own)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf, out = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            buf = b""
            if record.WhichOneof("record_type") == "history":
                out.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
    return out
