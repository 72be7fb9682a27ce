"""Angle diagnostics (DLFL paper, section 3.2 and Fig. 8): feature-to-classifier angles per label.

A normalised classifier predicts label j from the sign of cos(theta) between the feature it scores
label j from and the weight w_j, so theta < 90 degrees means "present" (DLFL eq. 4). A well-trained
model puts positive samples near 0 degrees and negative ones near 180. With one shared pooled feature
for all labels (the OFML mechanism) the paper shows the best the loss can reach is
``arccos(1 / sqrt(M))`` (:func:`optimal_angle_deg`), close to 90 degrees for many labels; per-label
features (SSCA) are not bound by it. Fig. 8 plots these angles per label as box plots, split into
positive and negative samples, with lines at 90 degrees and at that optimum: :func:`plot_angles`.

For the ``pooled`` head the classifier has a bias, so its decision boundary is not exactly 90
degrees; the angle still measures how far the feature points towards w_j, as in the paper's baseline.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

__all__ = ["label_angles", "summarise_angles", "optimal_angle_deg", "plot_angles", "angles_for_model",
           "load_model_weights"]

ArrayLike = np.ndarray | torch.Tensor


def _as_float64(name: str, value: ArrayLike) -> torch.Tensor:
    # float64 because arccos is ill-conditioned near cos = +-1: in float32 an exactly aligned pair
    # can come out a few hundredths of a degree off.
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", torch.float64)
    try:
        return torch.as_tensor(np.asarray(value, dtype=np.float64))
    except (TypeError, ValueError):
        raise ValueError(f"Expected `{name}` to be a numeric array or tensor, "
                         f"got {type(value).__name__}.") from None


def label_angles(features: ArrayLike, weights: ArrayLike, targets: ArrayLike,
                 class_names: Sequence[str] | None = None) -> pd.DataFrame:
    """Angle in degrees between the feature scoring label j of image i and the classifier weight w_j.

    Args:
        features: ``[N, C]`` one shared feature per image (pooled and cos heads: every label is scored
            from it), or ``[N, M, C]`` one feature per label (SSCA: label j from ``features[i, j]``).
        weights: classifier weights ``[M, C]`` (unnormalised is fine: only directions matter).
        targets: ``[N, M]`` multi-hot; ``positive`` is ``targets > 0.5``.
        class_names: optional M names for the ``label_name`` column; default the label index as text.

    Returns:
        Long format, one row per (image, label), sample-major: ``label`` (column index),
        ``label_name`` (categorical, in label order), ``sample`` (row of ``features``), ``positive``
        (bool), ``angle_deg`` (0..180). A zero feature or weight has no direction: its angle is NaN.
    """
    f = _as_float64("features", features)
    w = _as_float64("weights", weights)
    y = _as_float64("targets", targets)
    if w.dim() != 2:
        raise ValueError(f"Expected `weights` of shape [M, C], got {tuple(w.shape)}.")
    m, c = w.shape
    if f.dim() not in (2, 3) or f.shape[-1] != c or (f.dim() == 3 and f.shape[1] != m):
        raise ValueError(f"Expected `features` of shape [N, {c}] or [N, {m}, {c}] to match `weights` "
                         f"[{m}, {c}], got {tuple(f.shape)}.")
    n = f.shape[0]
    if tuple(y.shape) != (n, m):
        raise ValueError(f"Expected `targets` of shape [{n}, {m}], got {tuple(y.shape)}.")
    names = [str(j) for j in range(m)] if class_names is None else [str(s) for s in class_names]
    if len(names) != m or len(set(names)) != m:
        raise ValueError(f"Expected {m} distinct class_names (one per label), got {len(names)} "
                         f"with {len(set(names))} distinct.")

    dots = f @ w.T if f.dim() == 2 else (f * w).sum(-1)
    norms = (f.norm(dim=-1, keepdim=f.dim() == 2) * w.norm(dim=-1)).expand(n, m)
    cos = torch.where(norms > 0, dots / norms, torch.full_like(dots, float("nan")))
    angles = torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0))).numpy()

    label = np.tile(np.arange(m), n)
    return pd.DataFrame({
        "label": label,
        "label_name": pd.Categorical.from_codes(label, categories=names),
        "sample": np.repeat(np.arange(n), m),
        "positive": (y > 0.5).numpy().reshape(-1),
        "angle_deg": angles.reshape(-1),
    })


def summarise_angles(df: pd.DataFrame) -> pd.DataFrame:
    """Per label and polarity: ``count``, ``mean_deg``, ``median_deg`` of the angles of ``df``.

    ``df`` is :func:`label_angles`' output. A polarity with no samples for a label (e.g. a class absent
    from the evaluated set) has no row. NaN angles are left out of the statistics but counted.
    """
    keys = ["label", "label_name", "positive"] if "label_name" in df else ["label", "positive"]
    grouped = df.groupby(keys, observed=True, sort=True)["angle_deg"]
    out = grouped.agg(count="size", mean_deg="mean", median_deg="median").reset_index()
    return out.sort_values(["label", "positive"], ascending=[True, False], ignore_index=True)


def optimal_angle_deg(num_labels: int) -> float:
    """The OFML optimal angle ``arccos(1 / sqrt(M))`` in degrees (DLFL section 3.2.2, eq. 12's solution).

    M is the total number of labels the classifier scores (positives plus negatives, M = M_p + M_n):
    with M orthogonal unit classifiers, the unit shared feature minimising BCE has ``|x_j| = 1/sqrt(M)``
    along every w_j, whatever the split into positives and negatives. The paper's values: M = 80
    (MS-COCO) 83.58, M = 26 (PA-100K) 78.69, M = 3 54.74 degrees; negative labels sit at
    ``180 - optimal_angle_deg(M)``.
    """
    if isinstance(num_labels, bool) or not isinstance(num_labels, (int, np.integer)) or num_labels < 1:
        raise ValueError(f"Expected `num_labels` to be an integer >= 1, got {num_labels!r}.")
    return math.degrees(math.acos(1.0 / math.sqrt(num_labels)))


def plot_angles(df: pd.DataFrame, path: str | Path, title: str, num_labels: int | None = None) -> Path:
    """Box plot of :func:`label_angles` per label, positives and negatives side by side (paper Fig. 8).

    Dashed lines mark the 90 degree decision boundary and the OFML optimal angle for ``num_labels``
    labels, a dotted one its mirror ``180 - optimum`` (the optimum for negatives). ``num_labels``
    defaults to the number of labels in ``df``; pass the classifier's M if ``df`` holds a subset.
    Boxes span the quartiles, whiskers 1.5 IQR; outliers are not drawn (with thousands of samples
    per label they would hide the boxes). Returns the path of the PNG written.
    """
    import seaborn as sns  # slow to import; only plotting needs it
    from matplotlib.figure import Figure

    num_labels = int(df["label"].nunique()) if num_labels is None else num_labels
    optimum = optimal_angle_deg(num_labels)
    x = "label_name" if "label_name" in df else "label"
    data = df.assign(polarity=np.where(df["positive"], "positive", "negative"))

    # Figure (not pyplot): no global figure state, no GUI backend, nothing left open after saving.
    fig = Figure(figsize=(max(8.0, 2.0 + 0.3 * num_labels), 6.0), layout="constrained")
    ax = fig.subplots()
    with warnings.catch_warnings():
        # seaborn 0.13 passes matplotlib's deprecated `vert`; nothing the caller can act on.
        warnings.filterwarnings("ignore", message=".*vert.*", category=DeprecationWarning)
        sns.boxplot(data=data, x=x, y="angle_deg", hue="polarity", hue_order=["positive", "negative"],
                    palette={"positive": "tab:red", "negative": "tab:blue"}, showfliers=False,
                    linewidth=0.8, width=0.75, ax=ax)
    ax.axhline(90.0, color="tab:green", linestyle="--", linewidth=1.2,
               label="decision boundary (90°)")
    ax.axhline(optimum, color="tab:purple", linestyle="--", linewidth=1.2,
               label=f"OFML optimum, positives: arccos(1/√M) = {optimum:.2f}° (M = {num_labels})")
    ax.axhline(180.0 - optimum, color="tab:purple", linestyle=":", linewidth=1.2,
               label=f"OFML optimum, negatives: 180° − {optimum:.2f}° = {180.0 - optimum:.2f}°")
    ax.set(ylim=(0, 180), yticks=range(0, 181, 30), xlabel="label",
           ylabel="angle between feature and classifier weight (°)", title=title)
    ax.tick_params(axis="x", labelrotation=90, labelsize=8)
    ax.margins(x=0.005)
    ax.grid(axis="y", alpha=0.3)
    # Legend above the axes rather than beside them: beside, it squeezes plots of a few labels.
    handles, labels = ax.get_legend_handles_labels()
    ax.get_legend().remove()
    fig.legend(handles, labels, loc="outside upper center", ncol=5 if num_labels >= 25 else 2,
               fontsize=9, frameon=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=110)
    return path


@torch.no_grad()
def angles_for_model(model: torch.nn.Module, dataset, batch_size: int, device: torch.device | str,
                     class_names: Sequence[str] | None = None,
                     max_samples: int | None = None) -> pd.DataFrame:
    """:func:`label_angles` of ``model.label_features`` over a dataset of ``(x, y, ...)`` items.

    The model runs in eval mode without gradients (its mode is restored afterwards). ``max_samples``
    keeps the first that many items, so repeated calls see the same images. Angles are computed per
    batch, so SSCA's ``[N, M, C]`` features are never held for the whole dataset at once.
    """
    collate = getattr(dataset, "collate_fn", None)
    if max_samples is not None:
        if max_samples < 1:
            raise ValueError(f"Expected `max_samples` >= 1 or None, got {max_samples}.")
        dataset = Subset(dataset, range(min(max_samples, len(dataset))))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    was_training = model.training
    model.eval()
    frames, seen = [], 0
    try:
        for batch in tqdm(loader, desc="angles", leave=False, disable=None):
            features, weights = model.label_features(batch[0].to(device))
            frame = label_angles(features, weights, batch[1], class_names)
            frame["sample"] += seen
            seen += len(batch[1])
            frames.append(frame)
    finally:
        model.train(was_training)
    if not frames:
        raise ValueError("The dataset is empty: no angles to compute.")
    return pd.concat(frames, ignore_index=True)


def load_model_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Load a finished run's ``model.pt`` into ``model``, built from the same run's ``config.yaml``.

    Only tensors are read (``weights_only``: a planted pickle runs no code). A cut, damaged or
    foreign file, and weights of another model (the config.yaml of one run beside the model.pt of
    another), are one-line ``ValueError``s naming the file.
    """
    path = Path(path)
    again = "train the run again (`python -m cml_bench run ... --rerun`)"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - zip, unpickling and EOF errors all mean the same here
        line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"'{path}' is not a readable model file ({path.stat().st_size:,} bytes; {line[:120]}): it "
                         f"is cut short, damaged or not written by cml_bench; {again}.") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"'{path}' does not hold a model state (a mapping of tensors); {again}.")
    wanted = model.state_dict()
    missing = sorted(set(wanted) - set(state))
    unexpected = sorted(set(state) - set(wanted))
    reshaped = sorted(k for k in set(wanted) & set(state) if wanted[k].shape != state[k].shape)
    if missing or unexpected or reshaped:
        parts = [f"{len(v)} {what} (e.g. {v[0]})" for what, v in
                 (("missing", missing), ("unexpected", unexpected), ("of another shape", reshaped)) if v]
        raise ValueError(f"'{path}' does not fit the model that {path.parent / 'config.yaml'} describes: "
                         f"parameters {', '.join(parts)}; the two files come from different runs or versions, "
                         f"{again}.")
    model.load_state_dict(state)
