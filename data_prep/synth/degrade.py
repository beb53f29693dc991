"""Scan-like degradation: paper tone, slight skew, blur, ink noise, dust specks, optional binarisation.

Only the skew moves pixels, so it is the only step that touches the annotations: each word box's corners are
rotated with the image and replaced by their axis-aligned bounds. Noise is confined to inked pixels and the
paper stays one flat tone, so pages still compress well as PNG (a scanner's white clipping looks the same).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageFilter

from .document import Box, SynthEntity, SynthWord, union_box

MAX_SKEW_DEGREES = 1.5


@dataclass(frozen=True)
class ScanParams:
    """One page's scan defects (angle in degrees, counter-clockwise; ``threshold`` None = keep grayscale)."""

    paper: int
    angle: float
    blur: float
    noise: float
    specks: float
    threshold: int | None


def sample_params(rng: np.random.Generator) -> ScanParams:
    """Draw defects mild enough to keep text legible, varied enough that no two pages look alike."""
    return ScanParams(
        paper=int(rng.integers(238, 256)) if rng.random() < 0.6 else 255,
        angle=float(rng.uniform(-MAX_SKEW_DEGREES, MAX_SKEW_DEGREES)) if rng.random() < 0.7 else 0.0,
        blur=float(rng.uniform(0.3, 0.9)) if rng.random() < 0.6 else 0.0,
        noise=float(rng.uniform(3.0, 12.0)),
        specks=float(rng.uniform(0.0, 0.0008)),
        threshold=int(rng.integers(160, 200)) if rng.random() < 0.25 else None,
    )


def rotate_box(box: Box, angle: float, size: tuple[int, int]) -> Box:
    """Where ``box`` lands after ``Image.rotate(angle)`` about the centre: bounds of its rotated corners."""
    cx, cy = size[0] / 2, size[1] / 2
    cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    xs, ys = [], []
    for x, y in ((box[0], box[1]), (box[2], box[1]), (box[0], box[3]), (box[2], box[3])):
        xs.append(cx + (x - cx) * cos + (y - cy) * sin)
        ys.append(cy - (x - cx) * sin + (y - cy) * cos)
    return (
        max(0, math.floor(min(xs))),
        max(0, math.floor(min(ys))),
        min(size[0], math.ceil(max(xs))),
        min(size[1], math.ceil(max(ys))),
    )


def rotate_entities(entities: list[SynthEntity], angle: float, size: tuple[int, int]) -> list[SynthEntity]:
    """Move every word box with the skew and rebuild each entity box as the union of its words."""
    moved = []
    for entity in entities:
        words = [SynthWord(w.text, rotate_box(w.box, angle, size)) for w in entity.words]
        moved.append(replace(entity, words=words, box=union_box([w.box for w in words])))
    return moved


def _noisy(pixels: np.ndarray, params: ScanParams, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise on inked pixels plus sparse dark dust specks on the whole page."""
    out = pixels.astype(np.float32)
    inked = out < params.paper - 2
    out[inked] += rng.normal(0.0, params.noise, size=int(inked.sum())).astype(np.float32)
    n_specks = int(params.specks * out.size)
    flat = out.reshape(-1)
    flat[rng.integers(0, out.size, size=n_specks)] = rng.uniform(0, 120, size=n_specks)
    return np.clip(out, 0, 255).astype(np.uint8)


def degrade(
    image: Image.Image, entities: list[SynthEntity], rng: np.random.Generator
) -> tuple[Image.Image, list[SynthEntity]]:
    """Apply sampled scan defects to a clean page; returns the new image and entities with moved boxes."""
    params = sample_params(rng)
    paper = np.asarray(image, dtype=np.float32) * (params.paper / 255.0)
    page = Image.fromarray(paper.round().astype(np.uint8), "L")
    if params.angle:
        page = page.rotate(params.angle, resample=Image.Resampling.BILINEAR, fillcolor=params.paper)
        entities = rotate_entities(entities, params.angle, page.size)
    if params.blur:
        page = page.filter(ImageFilter.GaussianBlur(params.blur))
    pixels = _noisy(np.asarray(page), params, rng)
    if params.threshold is not None:
        pixels = np.where(pixels < params.threshold, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "L"), entities
