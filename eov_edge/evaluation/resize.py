"""Image resizing in numpy, equal to ``torch.nn.functional.interpolate`` where training used it.

The example factory once resized crops with torch; the evaluation package is numpy only (the gate
and the device tools must not need PyTorch), so these reproduce torch's ``area`` (adaptive average
pooling), ``bilinear`` (``align_corners=False``, no antialiasing) and ``nearest`` modes.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import numpy as np

Mode = Literal["area", "bilinear", "nearest"]


@lru_cache(maxsize=256)  # the factory resizes every crop: a few distinct (source, target) sizes
def _area_matrix(source: int, target: int) -> np.ndarray:
    """(target, source) averaging weights of adaptive average pooling: output i averages source
    pixels floor(i * source / target) .. ceil((i + 1) * source / target) - 1."""
    weights = np.zeros((target, source), np.float64)
    for i in range(target):
        start = (i * source) // target
        end = -((-(i + 1) * source) // target)
        weights[i, start:end] = 1.0 / (end - start)
    return weights


@lru_cache(maxsize=256)
def _bilinear_matrix(source: int, target: int) -> np.ndarray:
    """(target, source) interpolation weights, half-pixel centres, edges clamped (torch's bilinear
    with align_corners=False)."""
    weights = np.zeros((target, source), np.float64)
    # torch computes the source index and its weight in float32: so do we, to equal its output
    scale = np.float32(source / target)
    for i in range(target):
        x = max(scale * np.float32(i + 0.5) - np.float32(0.5), np.float32(0.0))
        left = min(int(np.floor(x)), source - 1)
        right = min(left + 1, source - 1)
        frac = float(np.float32(x) - np.float32(left))
        weights[i, left] += 1.0 - frac
        weights[i, right] += frac
    return weights


def resize(array: np.ndarray, size: int | tuple[int, int], mode: Mode = "area") -> np.ndarray:
    """(C, h, w) -> (C, H, W) float32. ``area``: average when shrinking, bilinear when enlarging
    (as the example factory resizes crops); ``bilinear``; ``nearest``: torch's legacy nearest,
    source index floor(i * h / H)."""
    height, width = (size, size) if isinstance(size, int) else size
    values = np.asarray(array, dtype=np.float32)
    if values.ndim != 3:
        raise ValueError(f"resize takes (C, h, w), got shape {values.shape}")
    _, h, w = values.shape
    if mode == "nearest":
        rows = (np.arange(height) * h) // height
        cols = (np.arange(width) * w) // width
        return np.ascontiguousarray(values[:, rows][:, :, cols])
    if mode == "area" and w >= width:  # the factory's rule: area when the crop shrinks
        row_w, col_w = _area_matrix(h, height), _area_matrix(w, width)
    else:
        row_w, col_w = _bilinear_matrix(h, height), _bilinear_matrix(w, width)
    # (H, h) @ (C, h, w) @ (w, W): separable weights, in float64 so the sums match torch's float32
    # to its own rounding
    out = np.einsum("Hh,chw,Ww->cHW", row_w, values.astype(np.float64), col_w, optimize=True)
    return out.astype(np.float32)
