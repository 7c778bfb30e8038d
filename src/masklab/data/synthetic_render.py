"""Drawing for the synthetic dataset: textured backgrounds, shape masks and fill patterns.

Everything takes an explicit ``numpy.random.Generator`` so an image depends only on its seed.
The classes are shapes (the model must learn geometry), the attributes are colour and fill
pattern (the attribute heads must learn appearance); backgrounds are textured and tinted in any
hue so that colour alone never separates object from background.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "ring", "bar", "star")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (205, 40, 40),
    "green": (40, 175, 60),
    "blue": (45, 75, 215),
    "yellow": (225, 205, 45),
}
PATTERNS: tuple[str, ...] = ("solid", "striped", "dotted")


@dataclass(frozen=True)
class ShapeSpec:
    """One object to draw: shape, pose and appearance.

    Attributes:
        shape: index into :data:`SHAPES`.
        color: index into :data:`COLORS` (insertion order).
        pattern: index into :data:`PATTERNS`.
        cx: centre column in pixels.
        cy: centre row in pixels.
        radius: outer radius in pixels.
        angle: rotation in radians.
    """

    shape: int
    color: int
    pattern: int
    cx: float
    cy: float
    radius: float
    angle: float


def _polygon_mask(points: np.ndarray, size: int) -> np.ndarray:
    mask = np.zeros((size, size), dtype=np.uint8)
    # shift=4: sub-pixel vertices (1/16 px) so small rotated shapes keep their outline.
    pts = np.round(points * 16.0).astype(np.int32).reshape(-1, 1, 2)
    cv2.fillPoly(mask, [pts], 1, lineType=cv2.LINE_8, shift=4)
    return mask.astype(bool)


def _rotated(points: np.ndarray, spec: ShapeSpec) -> np.ndarray:
    c, s = math.cos(spec.angle), math.sin(spec.angle)
    rot = np.array([[c, -s], [s, c]])
    return points @ rot.T + np.array([spec.cx, spec.cy])


def _regular(n: int, radius: float, inner: float | None = None) -> np.ndarray:
    """Vertices of a regular n-gon, or of an n-pointed star when ``inner`` is given."""
    if inner is None:
        ang = np.arange(n) * 2 * math.pi / n - math.pi / 2
        return np.stack([np.cos(ang), np.sin(ang)], 1) * radius
    ang = np.arange(2 * n) * math.pi / n - math.pi / 2
    rad = np.where(np.arange(2 * n) % 2 == 0, radius, inner)
    return np.stack([np.cos(ang) * rad, np.sin(ang) * rad], 1)


def shape_mask(spec: ShapeSpec, size: int) -> np.ndarray:
    """(size, size) bool mask of the full (unoccluded) shape."""
    name = SHAPES[spec.shape]
    r = spec.radius
    if name in ("circle", "ring"):
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        d2 = (xx + 0.5 - spec.cx) ** 2 + (yy + 0.5 - spec.cy) ** 2
        mask = d2 <= r * r
        if name == "ring":
            mask &= d2 >= (0.55 * r) ** 2  # hollow: the hole shows whatever lies below
        return mask
    if name == "square":
        pts = _regular(4, r * 0.95)
    elif name == "triangle":
        pts = _regular(3, r * 1.1)
    elif name == "bar":
        half_t = max(1.5, 0.11 * r)  # thin and elongated, a few pixels across
        pts = np.array([[-1.2 * r, -half_t], [1.2 * r, -half_t], [1.2 * r, half_t], [-1.2 * r, half_t]])
    elif name == "star":
        pts = _regular(5, r * 1.1, inner=r * 0.45)
    else:  # pragma: no cover - SHAPES and this switch are kept in sync
        raise AssertionError(name)
    return _polygon_mask(_rotated(pts, spec), size)


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) float32 texture: tinted base + linear gradient + sine stripes + noise."""
    base = rng.uniform(50, 200, size=3)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    g_ang = rng.uniform(0, 2 * math.pi)
    grad = (np.cos(g_ang) * xx + np.sin(g_ang) * yy)[..., None] * rng.uniform(-60, 60, size=3)
    s_ang = rng.uniform(0, math.pi)
    period = rng.uniform(6, 24)
    phase = (np.cos(s_ang) * xx + np.sin(s_ang) * yy) * size * 2 * math.pi / period
    stripes = np.sin(phase)[..., None] * rng.uniform(8, 28) * rng.uniform(0.5, 1.0, size=3)
    noise = rng.normal(0, 9, size=(size, size, 3))
    return (base + grad + stripes + noise).astype(np.float32)


def fill(rng: np.random.Generator, spec: ShapeSpec, size: int) -> np.ndarray:
    """(size, size, 3) float32 appearance of an object over the whole canvas (masked by the caller)."""
    color = np.array(list(COLORS.values())[spec.color], dtype=np.float32) + rng.uniform(-18, 18, size=3)
    dark = color * 0.3
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    pattern = PATTERNS[spec.pattern]
    if pattern == "solid":
        on = np.ones((size, size), dtype=bool)
    elif pattern == "striped":
        ang = rng.uniform(0, math.pi)
        t = np.cos(ang) * (xx - spec.cx) + np.sin(ang) * (yy - spec.cy)
        on = np.mod(t, 6.0) < 3.5
    else:  # dotted: dark dots on a regular grid, offset randomly
        ox, oy = rng.uniform(0, 6, size=2)
        dx = np.mod(xx - ox, 6.0) - 3.0
        dy = np.mod(yy - oy, 6.0) - 3.0
        on = dx * dx + dy * dy > 2.6
    img = np.where(on[..., None], color, dark)
    return (img + rng.normal(0, 7, size=(size, size, 3))).astype(np.float32)
