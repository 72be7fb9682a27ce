"""Angle diagnostics (DLFL Fig. 8): hand-computed angles, the OFML optimum, summaries, plot, model pass."""
from __future__ import annotations

import math

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch

from cml_bench.angles import angles_for_model, label_angles, optimal_angle_deg, plot_angles, summarise_angles
from cml_bench.config import ModelConfig
from cml_bench.models import build_model
from cml_bench.stream import MultiLabelTensorDataset

matplotlib.use("Agg")

# Two labels with orthogonal weights of different norms (only directions may matter).
WEIGHTS = np.array([[2.0, 0.0], [0.0, 0.5]])
TARGETS = np.array([[1, 0], [1, 1], [0, 1]])




def test_shared_features_hand_computed():
    # One feature per image, scored against both weights.
    features = np.array([[3.0, 0.0], [1.0, 1.0], [-1.0, 0.0]])
    df = label_angles(features, WEIGHTS, TARGETS)
    assert list(df.columns) == ["label", "label_name", "sample", "positive", "angle_deg"]
    assert df["sample"].tolist() == [0, 0, 1, 1, 2, 2]
    assert df["label"].tolist() == [0, 1, 0, 1, 0, 1]
    assert df["positive"].tolist() == [True, False, True, True, False, True]
    np.testing.assert_allclose(df["angle_deg"], [0, 90, 45, 45, 180, 90], atol=1e-9)


def test_per_label_features_hand_computed():
    # features[i, j] is the feature scoring label j of image i (SSCA).
    features = np.array([
        [[5.0, 0.0], [1.0, 1.0]],    # label 0 along w0: 0;   label 1 at 45 from w1
        [[-1.0, 0.0], [1.0, 0.0]],   # label 0 opposite w0: 180; label 1 orthogonal to w1: 90
        [[1.0, 1.0], [0.0, -2.0]],   # 45; 180
    ])
    df = label_angles(features, WEIGHTS, TARGETS)
    np.testing.assert_allclose(df["angle_deg"], [0, 45, 180, 90, 45, 180], atol=1e-9)
    # Torch input gives the same frame as numpy input.
    pd.testing.assert_frame_equal(df, label_angles(torch.tensor(features, dtype=torch.float32),
                                                   torch.tensor(WEIGHTS), torch.tensor(TARGETS)))


def test_angles_are_exact_for_aligned_float32_vectors():
    # float32 arccos near cos = 1 is off by ~0.02 degrees; the float64 computation is not.
    w = torch.randn(7, 33)
    df = label_angles(w.unsqueeze(0) * 1e3, w, torch.ones(1, 7))
    assert df["angle_deg"].abs().max() < 1e-4


def test_class_names_and_zero_vectors():
    features = np.array([[0.0, 0.0], [1.0, 0.0]])
    df = label_angles(features, WEIGHTS, TARGETS[:2], class_names=["cat", "dog"])
    assert df["label_name"].tolist() == ["cat", "dog"] * 2
    assert list(df["label_name"].cat.categories) == ["cat", "dog"]
    assert df["angle_deg"].iloc[:2].isna().all()  # a zero feature has no direction
    assert label_angles(features, WEIGHTS, TARGETS[:2])["label_name"].tolist() == ["0", "1"] * 2


@pytest.mark.parametrize("features, weights, targets, match", [
    (np.zeros((3, 2)), np.zeros(2), TARGETS, "weights"),
    (np.zeros((3, 4)), WEIGHTS, TARGETS, "features"),
    (np.zeros((3, 5, 2)), WEIGHTS, TARGETS, "features"),
    (np.zeros((3, 2)), WEIGHTS, TARGETS[:2], "targets"),
])
def test_bad_shapes(features, weights, targets, match):
    with pytest.raises(ValueError, match=match):
        label_angles(features, weights, targets)


def test_bad_class_names():
    with pytest.raises(ValueError, match="2 distinct class_names"):
        label_angles(np.ones((3, 2)), WEIGHTS, TARGETS, class_names=["a"])
    with pytest.raises(ValueError, match="distinct"):
        label_angles(np.ones((3, 2)), WEIGHTS, TARGETS, class_names=["a", "a"])


def test_optimal_angle():
    assert optimal_angle_deg(4) == pytest.approx(60.0)
    assert optimal_angle_deg(1) == pytest.approx(0.0)
    # The paper's values (section 3.2.2): M = 2, 3, 26 (PA-100K), 80 (MS-COCO).
    for m, paper in [(2, 45.0), (3, 54.74), (26, 78.69), (80, 83.58)]:
        assert round(optimal_angle_deg(m), 2) == paper
    # It is the BCE optimum: M orthogonal unit weights, a unit feature at +-1/sqrt(M) on each.
    m = 6
    x = np.full(m, 1 / math.sqrt(m))
    assert math.degrees(math.acos(x @ np.eye(m)[0])) == pytest.approx(optimal_angle_deg(m))
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="num_labels"):
            optimal_angle_deg(bad)


def test_summarise_counts_and_statistics():
    features = np.array([[3.0, 0.0], [1.0, 1.0], [-1.0, 0.0]])
    summary = summarise_angles(label_angles(features, WEIGHTS, TARGETS, class_names=["a", "b"]))
    assert list(summary.columns) == ["label", "label_name", "positive", "count", "mean_deg", "median_deg"]
    rows = {(r.label, r.positive): r for r in summary.itertuples()}
    # label 0: positives at 0 and 45 degrees, one negative at 180; label 1: positives 45, 90, negative 90.
    assert rows[0, True].count == 2 and rows[0, True].mean_deg == pytest.approx(22.5)
    assert rows[0, False].count == 1 and rows[0, False].median_deg == pytest.approx(180.0)
    assert rows[1, True].count == 2 and rows[1, True].median_deg == pytest.approx(67.5)
    assert rows[1, False].count == 1 and rows[1, False].mean_deg == pytest.approx(90.0)
    assert summary["count"].sum() == TARGETS.size


def test_summarise_counts_match_targets():
    rng = np.random.default_rng(0)
    targets = rng.random((50, 6)) < 0.3
    targets[:, 5] = False  # a label with no positives has no positive row
    summary = summarise_angles(label_angles(rng.normal(size=(50, 6, 4)), rng.normal(size=(6, 4)), targets))
    positives = summary[summary.positive].set_index("label")["count"]
    assert positives.to_dict() == {j: int(targets[:, j].sum()) for j in range(5)}
    assert (summary[~summary.positive]["count"].to_numpy() == 50 - targets.sum(0)).all()


def test_plot_angles_writes_png(tmp_path):
    rng = np.random.default_rng(0)
    m = 70
    df = label_angles(rng.normal(size=(40, 16)), rng.normal(size=(m, 16)), rng.random((40, m)) < 0.2,
                      class_names=[f"class {j}" for j in range(m)])
    path = plot_angles(df, tmp_path / "sub" / "angles.png", "test")
    assert path.stat().st_size > 10_000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _tiny_ssca(head: str = "ssca", num_labels: int = 4):
    torch.manual_seed(0)
    cfg = ModelConfig(backbone="resnet10t", head=head, feature_level=3, stem_pool=False, ssca_modules=2)
    return build_model(cfg, num_labels)


def _tiny_dataset(n: int = 7, m: int = 4) -> MultiLabelTensorDataset:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    return MultiLabelTensorDataset(images, (rng.random((n, m)) < 0.4).astype(np.float32))


@pytest.mark.parametrize("head", ["ssca", "pooled"])
def test_angles_for_model(head):
    model, data = _tiny_ssca(head), _tiny_dataset()
    df = angles_for_model(model, data, batch_size=3, device="cpu", class_names=list("abcd"))
    assert len(df) == 7 * 4
    assert df["sample"].tolist() == np.repeat(np.arange(7), 4).tolist()
    assert df["positive"].tolist() == (data.multi_hot.numpy() > 0.5).reshape(-1).tolist()
    assert df["angle_deg"].between(0, 180).all()
    assert model.training  # mode restored
    # Same angles as one pass over the whole set in eval mode (batching must not matter).
    model.eval()
    with torch.no_grad():
        features, weights = model.label_features(torch.as_tensor(data.images))
    expected = label_angles(features, weights, data.multi_hot, class_names=list("abcd"))
    pd.testing.assert_frame_equal(df, expected, atol=1e-3, rtol=0)


def test_angles_for_model_max_samples():
    df = angles_for_model(_tiny_ssca(), _tiny_dataset(), batch_size=4, device="cpu", max_samples=5)
    assert len(df) == 5 * 4 and df["sample"].max() == 4
    with pytest.raises(ValueError, match="max_samples"):
        angles_for_model(_tiny_ssca(), _tiny_dataset(), batch_size=4, device="cpu", max_samples=0)
