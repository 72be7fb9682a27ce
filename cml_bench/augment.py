"""Resizing and per-sample augmentation of image batches, on the batch's device.

Benchmarks store images once, as uint8 at one size; the training template and ``predict`` bring a
batch to the model's input size here (``model.image_size`` for training, ``eval.image_size`` for
evaluation), and the template augments training batches (``train.augment``). Everything works on a
whole ``[N, 3, H, W]`` batch at once (one ``grid_sample`` for every sample's crop, shift and flip);
the per-sample parameters are drawn on the CPU from the generator the caller passes (the run's
data-order generator), so a seeded run draws the same augmentations on any device.

Augmentations (the paper's two settings, DLFL sections 4.1.3 and 4.2.3):

* ``multiscale`` (generic multi-label, as in ML-GCN / ADD-GCN / TDRG): a crop whose height and width
  are each one of the scales (1, 0.875, 0.75, 0.66, 0.5) of the shorter image side, at most
  ``MAX_DISTORT`` scale steps apart, placed at one of 13 fixed grid positions (ML-GCN's
  ``MultiScaleCrop`` with ``more_fix_crop``), resized to the input size; horizontal flip with p = 0.5.
* ``pedestrian`` (the JLAC / Rethinking-PAR recipe the paper follows): resize, pad by 10 px and
  crop back at a random position (a shift of -10..10 px, zero fill), horizontal flip p = 0.5,
  Gaussian blur p = 0.5 (sigma uniform in 0.1..2.0), random erasing p = 0.5 (area 2-33 %, aspect
  0.3-3.3) filled with the ImageNet mean colour (torchvision's ``value=0`` after normalisation).

Outputs are float images in [0, 1] (the backbone accepts uint8 or such floats).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

AUGMENTATIONS = ("none", "multiscale", "pedestrian")

SCALES = (1.0, 0.875, 0.75, 0.66, 0.5)
MAX_DISTORT = 2
PAD = 10
BLUR_P, BLUR_SIGMA, BLUR_KERNEL = 0.5, (0.1, 2.0), 13
ERASE_P, ERASE_AREA, ERASE_RATIO = 0.5, (0.02, 0.33), (0.3, 3.3)
IMAGENET_MEAN = (0.485, 0.456, 0.406)


def check_augment(name: str) -> None:
    if name not in AUGMENTATIONS:
        raise ValueError(f"Unknown train.augment '{name}'. Available: {', '.join(AUGMENTATIONS)}.")


def as_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float 0..1; float batches are returned as they are."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x


def resize_batch(x: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """The batch at ``[H, W] = size`` (bilinear, antialiased); unchanged (even its dtype) if already there or None."""
    if size is None or tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(as_float(x), size=tuple(size), mode="bilinear", align_corners=False,
                         antialias=True).clamp_(0.0, 1.0)


def augment_batch(x: torch.Tensor, kind: str, size: tuple[int, int] | None,
                  generator: torch.Generator) -> torch.Tensor:
    """Augment every sample of ``x`` independently; output float ``[N, 3, *size]`` (size None: as stored)."""
    check_augment(kind)
    if kind == "none":
        return resize_batch(x, size)
    size = tuple(size) if size is not None else tuple(x.shape[-2:])
    if kind == "multiscale":
        return _affine(as_float(x), _multiscale_theta(len(x), x.shape[-2:], generator), size)
    x = as_float(resize_batch(x, size))
    x = _affine(x, _shift_flip_theta(len(x), size, generator), size)
    x = _blur(x, generator)
    return _erase(x, generator)


def _flips(n: int, generator: torch.Generator) -> torch.Tensor:
    return torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)


def _multiscale_theta(n: int, hw, generator: torch.Generator) -> torch.Tensor:
    """Affine maps (output -> input, normalised coordinates) of ML-GCN's multi-scale crops, flipped."""
    h, w = int(hw[0]), int(hw[1])
    base = min(h, w)
    sizes = [int(base * s) for s in SCALES]
    pairs = [(ch, cw) for i, ch in enumerate(sizes) for j, cw in enumerate(sizes) if abs(i - j) <= MAX_DISTORT]
    flips = _flips(n, generator)
    theta = torch.zeros(n, 2, 3)
    picks = torch.randint(len(pairs), (n,), generator=generator)
    spots = torch.randint(13, (n,), generator=generator)
    for k in range(n):
        ch, cw = pairs[int(picks[k])]
        y0, x0 = _grid_offsets(h - ch, w - cw)[int(spots[k])]
        theta[k, 0, 0] = flips[k] * cw / w
        theta[k, 0, 2] = 2 * (x0 + cw / 2) / w - 1
        theta[k, 1, 1] = ch / h
        theta[k, 1, 2] = 2 * (y0 + ch / 2) / h - 1
    return theta


def _grid_offsets(free_h: int, free_w: int) -> list[tuple[float, float]]:
    """ML-GCN's 13 crop positions (corners, centre, edge midpoints, quarter points), as (top, left)."""
    sh, sw = free_h // 4, free_w // 4
    at = [(0, 0), (0, 4), (4, 0), (4, 4), (2, 2), (2, 0), (2, 4), (4, 2), (0, 2), (1, 1), (1, 3), (3, 1), (3, 3)]
    return [(i * sh, j * sw) for i, j in at]


def _shift_flip_theta(n: int, size: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """Pad by PAD and crop back (an integer shift of -PAD..PAD px), and a horizontal flip with p = 0.5."""
    h, w = size
    shifts = torch.randint(-PAD, PAD + 1, (n, 2), generator=generator).float()
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = _flips(n, generator)
    theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = 2 * shifts[:, 1] / w
    theta[:, 1, 2] = 2 * shifts[:, 0] / h
    return theta


def _affine(x: torch.Tensor, theta: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    grid = F.affine_grid(theta.to(x.device, x.dtype), [len(x), x.shape[1], *size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False).clamp_(0.0, 1.0)


def _blur(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Separable Gaussian blur with a per-sample sigma; samples not drawn get the identity kernel."""
    n, c = x.shape[:2]
    apply = torch.rand(n, generator=generator) < BLUR_P
    sigma = torch.empty(n).uniform_(*BLUR_SIGMA, generator=generator)
    r = BLUR_KERNEL // 2
    offsets = torch.arange(-r, r + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets / sigma[:, None]) ** 2)
    kernel = kernel / kernel.sum(1, keepdim=True)
    kernel[~apply] = (offsets == 0).float()
    kernel = kernel.repeat_interleave(c, 0).to(x.device, x.dtype)  # one kernel per (sample, channel)
    y = F.pad(x.reshape(1, n * c, *x.shape[2:]), (r, r, r, r), mode="reflect")
    y = F.conv2d(y, kernel.view(n * c, 1, 1, -1), groups=n * c)
    y = F.conv2d(y, kernel.view(n * c, 1, -1, 1), groups=n * c)
    return y.view_as(x)


def _erase(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """torchvision's RandomErasing box search (10 tries), per sample, filled with the ImageNet mean."""
    n, _, h, w = x.shape
    boxes = torch.zeros(n, 4, dtype=torch.long)  # top, left, height, width; height 0 = not erased
    for k in range(n):
        if float(torch.rand(1, generator=generator)) >= ERASE_P:
            continue
        for _ in range(10):
            area = h * w * float(torch.empty(1).uniform_(*ERASE_AREA, generator=generator))
            log_ratio = torch.empty(1).uniform_(math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1]),
                                                generator=generator)
            ratio = math.exp(float(log_ratio))
            eh, ew = int(round(math.sqrt(area * ratio))), int(round(math.sqrt(area / ratio)))
            if eh < h and ew < w:
                top = int(torch.randint(0, h - eh + 1, (1,), generator=generator))
                left = int(torch.randint(0, w - ew + 1, (1,), generator=generator))
                boxes[k] = torch.tensor([top, left, eh, ew])
                break
    boxes = boxes.to(x.device)
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    inside_r = (rows >= boxes[:, :1]) & (rows < boxes[:, :1] + boxes[:, 2:3])
    inside_c = (cols >= boxes[:, 1:2]) & (cols < boxes[:, 1:2] + boxes[:, 3:4])
    mask = (inside_r[:, :, None] & inside_c[:, None, :])[:, None]
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return torch.where(mask, mean, x)
