"""Renderer of the built-in synthetic benchmark: parameters and seeds in, images and labels out.

Everything here happens in memory: :class:`DomainRenderer` draws the images of one domain
with NumPy and Pillow and yields them with their labels (split, person id, camera);
:mod:`metareid.data.synthetic.cache` names, encodes, writes, hashes and reuses the files.

**Identities.** A person is a set of clothing attributes: top colour and pattern (plain,
horizontal stripes, vertical stripes or checks, with a second colour and a stripe width),
sleeve length, bottom colour and kind (trousers, shorts, skirt), shoe, skin and hair colours,
hair length, an optional cap and an optional bag (backpack or shoulder bag, with its colour
and side), and a build (height, width). Identities are distinguishable by these combinations
but colours are continuous, so some people look alike.

**Images.** Each image of a person varies the pose (walking phase of arms and legs), the view
(front, back or side, which changes what the bag and the hair look like), the scale and
position of the box, the lighting (a left-right gradient and a gain) and sometimes an
occluder in front of the legs. Each camera has its own background (pavement, wall panels,
night with lamps or park, with its own colours and texture), gain, colour tint, preferred
views, box scale and blur.

**Domains.** Domains differ in style: which backgrounds their cameras see (each domain draws
them from its own mix), illumination and colour cast, saturation and contrast, haze, blur,
sensor noise, JPEG quality, camera elevation (people look shorter and wider from above) and
the brightness of the clothes people wear. Domains 0-3 are fixed presets (daylight,
indoor-warm, night-cold, overcast-park); further domains draw their style from the seed. The
shifts are moderate on purpose: a small CNN trained on some domains transfers to a held-out
one (see ``docs/data.md``), so domain generalization methods have something to improve.

**Splits.** Per domain: train ids ``1..N`` with their images spread over at least two
cameras; test ids ``N+1..N+M`` (disjoint from train), each seen by at least two cameras with
``test_images_per_camera`` images per camera: the first image of each camera is a query
(one query per id per camera), the others go to the gallery. Distractors (id ``0``, people
not in the query) are added to the gallery, and junk boxes (id ``-1``: background or a
person cut by the box border) too; the loaders drop the junk.

The images depend only on the parameters (same seed, same pixels, with the same NumPy and
Pillow), and a domain's images do not depend on ``num_domains``: domain ``d`` draws from
its own generators, seeded with ``[seed, d, k]``.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from metareid._validation import check_positive_int

__all__ = [
    "GENERATOR_VERSION",
    "DomainRenderer",
    "RenderedImage",
    "Split",
    "benchmark_params",
]

GENERATOR_VERSION = 1
"""Version of the drawing code; a manifest of another version triggers regeneration."""

Split = Literal["train", "query", "gallery"]
"""The split an image belongs to."""

_SUPERSAMPLE = 2  # people are drawn at twice the output size, then box-filtered down


# --------------------------------------------------------------------------------------------
# Styles of domains and cameras.


@dataclass(frozen=True)
class _Style:
    name: str
    backgrounds: tuple[float, float, float, float]  # weights of the _BACKGROUNDS kinds
    gain: float
    cast: tuple[float, float, float]
    saturation: float
    contrast: float
    haze: float
    haze_rgb: tuple[float, float, float]
    blur: float
    noise: float
    jpeg_quality: int
    elevation: float  # 0 = eye level; larger = seen from above
    clothing_value: tuple[float, float]  # range of the HSV value of clothes
    views: tuple[float, float, float]  # weights of front, back, side views


_PRESETS = (
    _Style(
        name="daylight",
        backgrounds=(0.5, 0.15, 0.0, 0.35),
        gain=1.05,
        cast=(1.0, 1.0, 1.0),
        saturation=1.0,
        contrast=1.0,
        haze=0.0,
        haze_rgb=(255, 255, 255),
        blur=0.0,
        noise=2.0,
        jpeg_quality=92,
        elevation=0.0,
        clothing_value=(0.35, 1.0),
        views=(1.0, 1.0, 1.0),
    ),
    _Style(
        name="indoor-warm",
        backgrounds=(0.3, 0.6, 0.1, 0.0),
        gain=0.95,
        cast=(1.05, 1.0, 0.93),
        saturation=0.92,
        contrast=0.95,
        haze=0.04,
        haze_rgb=(225, 205, 175),
        blur=0.3,
        noise=3.0,
        jpeg_quality=88,
        elevation=0.15,
        clothing_value=(0.3, 0.95),
        views=(1.5, 0.7, 1.0),
    ),
    _Style(
        name="night-cold",
        backgrounds=(0.3, 0.2, 0.5, 0.0),
        gain=0.75,
        cast=(0.94, 0.98, 1.07),
        saturation=0.85,
        contrast=0.9,
        haze=0.0,
        haze_rgb=(0, 0, 0),
        blur=0.4,
        noise=5.0,
        jpeg_quality=82,
        elevation=0.05,
        clothing_value=(0.25, 0.85),
        views=(0.8, 1.4, 1.0),
    ),
    _Style(
        name="overcast-park",
        backgrounds=(0.35, 0.1, 0.0, 0.55),
        gain=1.0,
        cast=(0.97, 1.03, 0.98),
        saturation=0.85,
        contrast=0.9,
        haze=0.08,
        haze_rgb=(200, 205, 210),
        blur=0.5,
        noise=3.5,
        jpeg_quality=85,
        elevation=0.35,
        clothing_value=(0.35, 1.0),
        views=(1.0, 1.0, 1.6),
    ),
)


def _random_style(index: int, rng: np.random.Generator) -> _Style:
    """A style for domains beyond the presets."""

    def rgb(low: float, high: float) -> tuple[float, float, float]:
        r, g, b = rng.uniform(low, high, size=3)
        return float(r), float(g), float(b)

    cast = rng.uniform(0.9, 1.1, size=3)
    views = rng.uniform(0.5, 1.5, size=3)
    weights = rng.dirichlet(np.ones(len(_BACKGROUNDS)))
    return _Style(
        name=f"random-{index}",
        backgrounds=(float(weights[0]), float(weights[1]), float(weights[2]), float(weights[3])),
        gain=float(rng.uniform(0.75, 1.1)),
        cast=(float(cast[0]), float(cast[1]), float(cast[2])),
        saturation=float(rng.uniform(0.8, 1.05)),
        contrast=float(rng.uniform(0.85, 1.0)),
        haze=float(rng.uniform(0.0, 0.1)),
        haze_rgb=rgb(150, 240),
        blur=float(rng.uniform(0.0, 0.6)),
        noise=float(rng.uniform(1.0, 5.0)),
        jpeg_quality=int(rng.integers(75, 95)),
        elevation=float(rng.uniform(0.0, 0.4)),
        clothing_value=(float(rng.uniform(0.2, 0.4)), float(rng.uniform(0.8, 1.0))),
        views=(float(views[0]), float(views[1]), float(views[2])),
    )


@dataclass(frozen=True)
class _Camera:
    gain: float
    tint: np.ndarray  # (3,)
    views: np.ndarray  # (3,) probabilities of front, back, side
    scale: float
    bg_shift: np.ndarray  # (3,)
    blur: float
    background: np.ndarray  # (Hc + margin, Wc + margin, 3) float32 texture


_BG_MARGIN = 12


_BACKGROUNDS = ("pavement", "panels", "night", "park")
_BG_PALETTES = {  # base colour, second colour (lines, panels, lamps, path)
    "pavement": ((150, 148, 140), (112, 110, 106)),
    "panels": ((196, 176, 146), (166, 146, 118)),
    "night": ((36, 40, 56), (230, 210, 150)),
    "park": ((84, 122, 70), (152, 142, 122)),
}


def _background(
    kind: str, shift: np.ndarray, size: tuple[int, int], rng: np.random.Generator
) -> np.ndarray:
    """A background texture of ``kind``, ``size`` (+ margin) pixels, float32 (H, W, 3)."""
    height, width = size[0] + _BG_MARGIN, size[1] + _BG_MARGIN
    palette = _BG_PALETTES[kind]
    scale = rng.uniform(0.85, 1.15, size=3).astype(np.float32)
    base = np.asarray(palette[0], dtype=np.float32) * scale + shift
    other = np.asarray(palette[1], dtype=np.float32) * scale + shift
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    coarse = rng.normal(0.0, 1.0, size=(height // 8 + 2, width // 8 + 2)).astype(np.float32)
    smooth = np.asarray(
        Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR),
        dtype=np.float32,
    )
    fine = rng.normal(0.0, 1.0, size=(height, width)).astype(np.float32)
    img = np.broadcast_to(base, (height, width, 3)).copy()
    if kind == "pavement":
        tile = int(rng.integers(14, 22))
        lines = ((yy % tile) < 1.5) | (((xx + 0.3 * yy) % (2 * tile)) < 1.5)
        img = np.where(lines[..., None], other, img)
        img += (10 * smooth + 4 * fine)[..., None]
    elif kind == "panels":
        width_panel = int(rng.integers(10, 20))
        panels = ((xx // width_panel) % 2).astype(bool)
        img = np.where(panels[..., None], other, img)
        floor = yy > height * rng.uniform(0.72, 0.85)
        img = np.where(floor[..., None], 0.6 * base, img)
        img += (6 * smooth + 3 * fine)[..., None]
    elif kind == "night":
        img = img * (0.7 + 0.6 * (yy / height))[..., None]
        for _ in range(int(rng.integers(1, 4))):
            cy, cx = rng.uniform(0, height * 0.5), rng.uniform(0, width)
            radius = rng.uniform(4, 10)
            glow = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2))
            img = img + glow[..., None] * (other - img) * 0.9
        img += (5 * smooth + 3 * fine)[..., None]
    else:  # park
        path = yy > height * rng.uniform(0.6, 0.75)
        img = np.where(path[..., None], other, img)
        img += (14 * smooth + 10 * fine)[..., None]
    return np.clip(img, 0, 255).astype(np.float32)


def _cameras(
    style: _Style, num_cameras: int, canvas: tuple[int, int], rng: np.random.Generator
) -> list[_Camera]:
    cameras = []
    total = sum(style.backgrounds)
    for _ in range(num_cameras):
        views = np.asarray(style.views) * rng.dirichlet(np.full(3, 2.0))
        shift = rng.normal(0.0, 14.0, size=3).astype(np.float32)
        cameras.append(
            _Camera(
                gain=float(rng.uniform(0.75, 1.25)),
                tint=(1.0 + rng.normal(0.0, 0.07, size=3)).astype(np.float32),
                views=views / views.sum(),
                scale=float(rng.uniform(0.84, 1.0)),
                bg_shift=shift,
                blur=float(rng.uniform(0.0, 0.4)),
                background=_background(
                    str(rng.choice(_BACKGROUNDS, p=np.asarray(style.backgrounds) / total)),
                    shift,
                    canvas,
                    rng,
                ),
            )
        )
    return cameras


# --------------------------------------------------------------------------------------------
# Identities and drawing.

_PATTERNS = ("plain", "hstripes", "vstripes", "checks")
_SKIN = ((255, 219, 180), (234, 192, 134), (198, 134, 66), (141, 85, 36), (95, 60, 35))
_HAIR = ((20, 15, 10), (60, 40, 20), (110, 75, 40), (200, 170, 100), (150, 150, 150))


@dataclass(frozen=True)
class _Identity:
    top: tuple[int, int, int]
    top2: tuple[int, int, int]
    pattern: str
    period: float
    long_sleeves: bool
    bottom: tuple[int, int, int]
    bottom_kind: str  # trousers | shorts | skirt
    shoes: tuple[int, int, int]
    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    long_hair: bool
    hat: tuple[int, int, int] | None
    bag: str  # none | backpack | shoulder
    bag_rgb: tuple[int, int, int]
    bag_side: int
    height: float
    width: float


def _colour(rng: np.random.Generator, value_range: tuple[float, float]) -> tuple[int, int, int]:
    """A clothing colour: any hue, either greyish or saturated, value in ``value_range``."""
    hue = rng.uniform(0.0, 1.0)
    saturation = rng.uniform(0.0, 0.2) if rng.random() < 0.3 else rng.uniform(0.45, 0.95)
    value = rng.uniform(*value_range)
    r, g, b = colorsys.hsv_to_rgb(hue, saturation, value)
    return int(255 * r), int(255 * g), int(255 * b)


def _identity(rng: np.random.Generator, style: _Style) -> _Identity:
    values = style.clothing_value
    top = _colour(rng, values)
    pattern = str(rng.choice(_PATTERNS, p=[0.4, 0.25, 0.15, 0.2]))
    top2 = _colour(rng, values)
    bag = str(rng.choice(["none", "backpack", "shoulder"], p=[0.45, 0.3, 0.25]))
    hat = _colour(rng, values) if rng.random() < 0.25 else None
    return _Identity(
        top=top,
        top2=top2,
        pattern=pattern,
        period=float(rng.uniform(0.07, 0.12)),
        long_sleeves=bool(rng.random() < 0.5),
        bottom=_colour(rng, values),
        bottom_kind=str(rng.choice(["trousers", "shorts", "skirt"], p=[0.65, 0.2, 0.15])),
        shoes=_colour(rng, (0.1, 0.9)),
        skin=_SKIN[int(rng.integers(len(_SKIN)))],
        hair=_HAIR[int(rng.integers(len(_HAIR)))],
        long_hair=bool(rng.random() < 0.35),
        hat=hat,
        bag=bag,
        bag_rgb=_colour(rng, values),
        bag_side=int(rng.choice([-1, 1])),
        height=float(rng.uniform(0.9, 1.04)),
        width=float(rng.uniform(0.85, 1.18)),
    )


def _draw_person(
    canvas: Image.Image,
    grid: tuple[np.ndarray, np.ndarray],
    person: _Identity,
    view: str,
    facing: int,
    phase: float,
    cx: float,
    feet: float,
    height: float,
    width_factor: float,
) -> Image.Image:
    """Draw ``person`` on ``canvas`` (modified in place, also returned)."""
    draw = ImageDraw.Draw(canvas)
    u = height
    w = u * person.width * width_factor
    top = feet - u
    side = view == "side"
    y_shoulder, y_waist, y_knee, y_foot = (top + f * u for f in (0.17, 0.5, 0.74, 0.97))
    half_shoulder = (0.085 if side else 0.15) * w
    half_waist = (0.08 if side else 0.13) * w
    limb = max(1.0, 0.075 * w)

    def line(points: list[tuple[float, float]], rgb: tuple[int, int, int], wid: float) -> None:
        draw.line(points, fill=rgb, width=max(1, round(wid)), joint="curve")

    # Behind the body: a backpack seen from the side, long hair seen from the back.
    if person.bag == "backpack" and side:
        x0 = cx - facing * half_shoulder
        box = (min(x0, x0 - facing * 0.11 * w), y_shoulder + 0.03 * u)
        draw.rectangle(
            [box, (max(x0, x0 - facing * 0.11 * w), y_waist - 0.04 * u)], fill=person.bag_rgb
        )
    # Legs and shoes.
    swing = math.sin(phase)
    if side:
        feet_x = [cx + facing * 0.16 * w * swing, cx - facing * 0.16 * w * swing]
        hips_x = [cx, cx]
    else:
        hips_x = [cx - 0.06 * w, cx + 0.06 * w]
        feet_x = [hips_x[0] - 0.02 * w * swing, hips_x[1] + 0.02 * w * swing]
    for hip, foot in zip(hips_x, feet_x, strict=True):
        knee = (0.5 * (hip + foot) + (facing * 0.02 * w if side else 0.0), y_knee)
        leg = [(hip, y_waist), knee, (foot, y_foot)]
        line(leg, person.skin, limb * 1.1)
        if person.bottom_kind == "trousers":
            line(leg, person.bottom, limb * 1.15)
        elif person.bottom_kind == "shorts":
            hem = (hip + 0.6 * (knee[0] - hip), y_waist + 0.6 * (knee[1] - y_waist))
            line([(hip, y_waist), hem], person.bottom, limb * 1.2)
        shoe = 0.05 * w
        draw.ellipse(
            [(foot - shoe, y_foot - 0.025 * u), (foot + shoe, y_foot + 0.012 * u)],
            fill=person.shoes,
        )
    if person.bottom_kind == "skirt":
        draw.polygon(
            [
                (cx - half_waist, y_waist - 0.01 * u),
                (cx + half_waist, y_waist - 0.01 * u),
                (cx + half_waist * 1.5, top + 0.68 * u),
                (cx - half_waist * 1.5, top + 0.68 * u),
            ],
            fill=person.bottom,
        )
    # Torso with its pattern.
    torso = [
        (cx - half_shoulder, y_shoulder),
        (cx + half_shoulder, y_shoulder),
        (cx + half_waist, y_waist + 0.02 * u),
        (cx - half_waist, y_waist + 0.02 * u),
    ]
    if person.pattern == "plain":
        draw.polygon(torso, fill=person.top)
    else:
        yy, xx = grid
        period = person.period * u
        rows = np.floor((yy - y_shoulder) / (period / 2)).astype(np.int64)
        cols = np.floor((xx - cx) / (period / 2)).astype(np.int64)
        band = {"hstripes": rows, "vstripes": cols, "checks": rows + cols}[person.pattern] % 2
        fill = np.where(band[..., None] == 1, person.top2, person.top).astype(np.uint8)
        mask = Image.new("L", canvas.size, 0)
        ImageDraw.Draw(mask).polygon(torso, fill=255)
        canvas.paste(Image.fromarray(fill), (0, 0), mask)
        draw = ImageDraw.Draw(canvas)
    # Bags in front of the torso.
    if person.bag == "backpack" and view == "back":
        draw.rectangle(
            [
                (cx - 0.7 * half_shoulder, y_shoulder + 0.03 * u),
                (cx + 0.7 * half_shoulder, y_waist - 0.03 * u),
            ],
            fill=person.bag_rgb,
        )
    elif person.bag == "backpack" and view == "front":
        for sign in (-1, 1):
            x = cx + sign * 0.6 * half_shoulder
            line([(x, y_shoulder), (x, y_waist - 0.08 * u)], person.bag_rgb, 0.035 * w)
    elif person.bag == "shoulder":
        bag_side = person.bag_side if view != "back" else -person.bag_side
        if side:
            bag_side = facing * person.bag_side
        x = cx + bag_side * (half_waist + 0.05 * w)
        line([(cx - bag_side * half_shoulder, y_shoulder), (x, y_waist)], person.bag_rgb, 0.03 * w)
        draw.rectangle(
            [(x - 0.07 * w, y_waist - 0.08 * u), (x + 0.07 * w, y_waist + 0.03 * u)],
            fill=person.bag_rgb,
        )
    # Arms.
    arm_swing = 0.12 * w * math.sin(phase + math.pi)
    if side:
        shoulders = [(cx, y_shoulder + 0.02 * u)]
        hands = [(cx + facing * arm_swing, top + 0.47 * u)]
    else:
        shoulders = [(cx - half_shoulder, y_shoulder + 0.02 * u), (cx + half_shoulder, y_shoulder)]
        hands = [
            (cx - half_shoulder - 0.03 * w, top + 0.47 * u + 0.01 * u * swing),
            (cx + half_shoulder + 0.03 * w, top + 0.47 * u - 0.01 * u * swing),
        ]
    for shoulder, hand in zip(shoulders, hands, strict=True):
        elbow = (0.5 * (shoulder[0] + hand[0]), 0.5 * (shoulder[1] + hand[1]))
        line([shoulder, hand], person.skin, limb * 0.9)
        line([shoulder, hand if person.long_sleeves else elbow], person.top, limb)
    # Neck, head, hair, hat.
    head_rx, head_ry = 0.06 * w, 0.068 * u
    head_cy = top + 0.085 * u
    head_cx = cx + (facing * 0.01 * w if side else 0.0)
    draw.rectangle(
        [(cx - 0.025 * w, head_cy), (cx + 0.025 * w, y_shoulder + 0.01 * u)], fill=person.skin
    )
    if person.long_hair and view != "front":
        draw.rectangle(
            [(head_cx - head_rx, head_cy), (head_cx + head_rx, top + 0.24 * u)], fill=person.hair
        )
    head = [(head_cx - head_rx, head_cy - head_ry), (head_cx + head_rx, head_cy + head_ry)]
    draw.ellipse(head, fill=person.hair)
    if view != "back":
        face_dx = facing * 0.25 * head_rx if side else 0.0
        draw.ellipse(
            [
                (head_cx - 0.85 * head_rx + face_dx, head_cy - 0.45 * head_ry),
                (head_cx + 0.85 * head_rx + face_dx, head_cy + head_ry),
            ],
            fill=person.skin,
        )
        if person.long_hair:
            for sign in (-1, 1):
                x = head_cx + sign * head_rx
                line([(x, head_cy - 0.2 * head_ry), (x, top + 0.22 * u)], person.hair, 0.03 * w)
    if person.hat is not None:
        draw.chord(
            [
                (head_cx - 1.1 * head_rx, head_cy - 1.15 * head_ry),
                (head_cx + 1.1 * head_rx, head_cy + 0.6 * head_ry),
            ],
            180,
            360,
            fill=person.hat,
        )
        brim = facing * 1.6 * head_rx if side else 1.25 * head_rx
        line(
            [(head_cx - (0 if side else brim), head_cy - 0.2 * head_ry), (head_cx + brim, head_cy)],
            person.hat,
            0.025 * u,
        )
    return canvas


# --------------------------------------------------------------------------------------------
# One image: background, person, occluder, photometric style, noise.


@dataclass
class _ImageRenderer:
    """Draws single images of one domain; ``rng`` advances with every image."""

    style: _Style
    cameras: list[_Camera]
    size: tuple[int, int]  # output (H, W)
    rng: np.random.Generator
    grid: tuple[np.ndarray, np.ndarray] = field(init=False)

    def __post_init__(self) -> None:
        height, width = self.size
        yy, xx = np.mgrid[0 : height * _SUPERSAMPLE, 0 : width * _SUPERSAMPLE]
        self.grid = (yy.astype(np.float32), xx.astype(np.float32))

    def render(self, person: _Identity | None, camera: int, junk: bool = False) -> Image.Image:
        rng, cam, style = self.rng, self.cameras[camera], self.style
        canvas_h, canvas_w = self.size[0] * _SUPERSAMPLE, self.size[1] * _SUPERSAMPLE
        oy, ox = rng.integers(0, _BG_MARGIN + 1, size=2)
        background = cam.background[oy : oy + canvas_h, ox : ox + canvas_w]
        if rng.random() < 0.5:
            background = background[:, ::-1]
        canvas = Image.fromarray(np.ascontiguousarray(background).astype(np.uint8))
        if person is not None:
            view = str(rng.choice(["front", "back", "side"], p=cam.views))
            squash = 1.0 - 0.25 * style.elevation
            height = canvas_h * 0.9 * cam.scale * rng.uniform(0.93, 1.05) * person.height * squash
            cx = canvas_w * (0.5 + rng.normal(0.0, 0.05))
            feet = canvas_h * (0.97 + rng.normal(0.0, 0.015)) - canvas_h * 0.04 * style.elevation
            if junk:  # a person cut by the box border
                cx += canvas_w * float(rng.choice([-0.55, 0.55]))
                height *= rng.uniform(1.0, 1.6)
            _draw_person(
                canvas,
                self.grid,
                person,
                view,
                facing=int(rng.choice([-1, 1])),
                phase=float(rng.uniform(0, 2 * math.pi)),
                cx=cx,
                feet=feet,
                height=height,
                width_factor=1.0 + 0.3 * style.elevation,
            )
            if not junk and rng.random() < 0.12:  # something in front of the legs
                top = canvas_h * rng.uniform(0.62, 0.8)
                left = canvas_w * rng.uniform(-0.3, 0.4)
                ImageDraw.Draw(canvas).rectangle(
                    [(left, top), (left + canvas_w * rng.uniform(0.5, 0.9), canvas_h)],
                    fill=_colour(rng, (0.2, 0.8)),
                )
        image = canvas.resize((self.size[1], self.size[0]), Image.Resampling.BOX)
        blur = style.blur + cam.blur
        if blur > 0.05:
            image = image.filter(ImageFilter.GaussianBlur(blur))
        pixels = np.asarray(image, dtype=np.float32)
        light = np.linspace(1.0, rng.uniform(0.8, 1.2), self.size[1], dtype=np.float32)
        if rng.random() < 0.5:
            light = light[::-1]
        gain = style.gain * cam.gain * rng.uniform(0.9, 1.1)
        cast = np.asarray(style.cast, dtype=np.float32) * cam.tint
        pixels = pixels * (gain * light)[None, :, None] * cast
        grey = pixels.mean(axis=2, keepdims=True)
        pixels = grey + (pixels - grey) * style.saturation
        pixels = 128.0 + (pixels - 128.0) * style.contrast
        pixels = pixels * (1.0 - style.haze) + style.haze * np.asarray(style.haze_rgb)
        pixels = pixels + rng.normal(0.0, style.noise, size=pixels.shape)
        return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))


# --------------------------------------------------------------------------------------------
# Public API: parameters, and a domain's images with their labels.


def benchmark_params(
    seed: int,
    num_domains: int,
    train_ids_per_domain: int,
    test_ids_per_domain: int,
    train_images_per_id: int,
    test_images_per_camera: int,
    num_cameras: int,
    num_distractors: int,
    num_junk: int,
    image_size: Sequence[int],
) -> dict[str, Any]:
    """Check the parameters of the synthetic benchmark and return them as a JSON-ready dict.

    The arguments are those of :func:`~metareid.data.generate_synthetic_benchmark` except
    ``root`` (see there for their meaning and defaults), here all required; the dict is
    what :class:`DomainRenderer` reads and what the cache's manifest records.

    Raises:
        ValueError: a parameter out of range (the message names it).
        TypeError: ``num_cameras`` or a count that must be >= 1 is not an int.

    Example:
        >>> params = benchmark_params(0, 1, 3, 2, 4, 3, 4, 0, 0, (64, 32))
        >>> params["image_size"], params["num_cameras"]
        ([64, 32], 4)
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    check_positive_int("num_domains", num_domains)
    check_positive_int("train_ids_per_domain", train_ids_per_domain)
    check_positive_int("test_ids_per_domain", test_ids_per_domain)
    if train_ids_per_domain + test_ids_per_domain > 9999:
        raise ValueError(
            "train_ids_per_domain + test_ids_per_domain must be <= 9999 (4-digit Market-1501 "
            f"ids), got {train_ids_per_domain + test_ids_per_domain}"
        )
    check_positive_int("train_images_per_id", train_images_per_id)
    check_positive_int("test_images_per_camera", test_images_per_camera)
    if test_images_per_camera < 2:
        raise ValueError(
            "test_images_per_camera must be >= 2 (one query and at least one gallery image), "
            f"got {test_images_per_camera}"
        )
    if isinstance(num_cameras, bool) or not isinstance(num_cameras, int):
        raise TypeError(f"num_cameras must be an int, got {num_cameras!r}")
    if not 2 <= num_cameras <= 6:
        raise ValueError(
            f"num_cameras must lie in 2..6 (the Market-1501 camera range), got {num_cameras}"
        )
    for name, value in (("num_distractors", num_distractors), ("num_junk", num_junk)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    size = tuple(image_size)
    if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) for s in size):
        raise ValueError(f"image_size must be (height, width) with two ints, got {image_size!r}")
    if size[0] < 16 or size[1] < 8:
        raise ValueError(f"image_size must be at least (16, 8), got {image_size!r}")
    return {
        "seed": seed,
        "num_domains": num_domains,
        "train_ids_per_domain": train_ids_per_domain,
        "test_ids_per_domain": test_ids_per_domain,
        "train_images_per_id": train_images_per_id,
        "test_images_per_camera": test_images_per_camera,
        "num_cameras": num_cameras,
        "num_distractors": num_distractors,
        "num_junk": num_junk,
        "image_size": [int(size[0]), int(size[1])],
    }


@dataclass(frozen=True)
class RenderedImage:
    """One rendered image and its labels.

    Attributes:
        image: the RGB image, ``image_size`` ``(H, W)`` pixels (Pillow size ``(W, H)``).
        split: ``"train"``, ``"query"`` or ``"gallery"``.
        pid: person id: ``1..N`` the train ids, ``N+1..N+M`` the test ids, ``0`` a
            distractor, ``-1`` junk (background or a person cut by the box border).
        camera: camera index, from 0.

    Example:
        >>> RenderedImage(Image.new("RGB", (16, 32)), "train", 1, 0).pid
        1
    """

    image: Image.Image
    split: Split
    pid: int
    camera: int


class DomainRenderer:
    """Draws the images of domain ``index`` of the synthetic benchmark, in memory.

    The style is fixed at construction: a preset for domains 0-3, otherwise drawn from a
    generator seeded with ``[seed, index, 0]``. :meth:`images` draws the cameras, the people
    and their images from fresh generators seeded with ``[seed, index, k]``, so every call
    yields the same images and a domain's images do not depend on ``num_domains``.

    Args:
        index: domain index ``d``, an int >= 0.
        params: the parameters, as returned by :func:`benchmark_params`.

    Attributes:
        index: the domain index.
        params: a copy of ``params``.
        style: name of the domain's style, e.g. ``"daylight"``.
        jpeg_quality: JPEG quality of the domain's style: compression artefacts are part of
            a domain's look, so whoever encodes the images uses it.

    Raises:
        ValueError: ``index`` is not an int >= 0.

    Example:
        >>> params = benchmark_params(0, 1, 2, 1, 2, 2, 2, 1, 1, (32, 16))
        >>> renderer = DomainRenderer(0, params)
        >>> images = list(renderer.images())
        >>> renderer.style, images[0].image.size, [i.split for i in images].count("train")
        ('daylight', (16, 32), 4)
    """

    def __init__(self, index: int, params: Mapping[str, Any]) -> None:
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ValueError(f"index must be an int >= 0, got {index!r}")
        self.index = index
        self.params = dict(params)
        if index < len(_PRESETS):
            self._style = _PRESETS[index]
        else:
            style_rng = np.random.default_rng([self.params["seed"], index, 0])
            self._style = _random_style(index, style_rng)

    @property
    def style(self) -> str:
        """Name of the domain's style."""
        return self._style.name

    @property
    def jpeg_quality(self) -> int:
        """JPEG quality of the domain's style."""
        return self._style.jpeg_quality

    def images(self) -> Iterator[RenderedImage]:
        """Draw the domain's images, one at a time.

        Yields, in this order: the train images (ids ``1..N``, ``train_images_per_id``
        each, cycling over 2 or more cameras), the test images (ids ``N+1..N+M``; per
        camera that sees the id, one query then ``test_images_per_camera - 1`` gallery
        images), the distractors (id 0, gallery) and the junk (id -1, gallery).
        """
        params, index, style = self.params, self.index, self._style
        seed, num_cameras = params["seed"], params["num_cameras"]
        size = (params["image_size"][0], params["image_size"][1])
        canvas = (size[0] * _SUPERSAMPLE, size[1] * _SUPERSAMPLE)
        cameras = _cameras(style, num_cameras, canvas, np.random.default_rng([seed, index, 1]))
        people_rng = np.random.default_rng([seed, index, 2])
        renderer = _ImageRenderer(style, cameras, size, np.random.default_rng([seed, index, 3]))

        def camera_subset() -> list[int]:
            count = int(people_rng.integers(2, num_cameras + 1))
            return sorted(int(c) for c in people_rng.choice(num_cameras, size=count, replace=False))

        num_train, num_test = params["train_ids_per_domain"], params["test_ids_per_domain"]
        for pid in range(1, num_train + 1):
            person = _identity(people_rng, style)
            cams = camera_subset()
            for k in range(params["train_images_per_id"]):
                camera = cams[k % len(cams)]
                yield RenderedImage(renderer.render(person, camera), "train", pid, camera)
        for pid in range(num_train + 1, num_train + num_test + 1):
            person = _identity(people_rng, style)
            for camera in camera_subset():
                for k in range(params["test_images_per_camera"]):
                    split: Split = "query" if k == 0 else "gallery"
                    yield RenderedImage(renderer.render(person, camera), split, pid, camera)
        for _ in range(params["num_distractors"]):
            camera = int(people_rng.integers(num_cameras))
            image = renderer.render(_identity(people_rng, style), camera)
            yield RenderedImage(image, "gallery", 0, camera)
        for _ in range(params["num_junk"]):
            camera = int(people_rng.integers(num_cameras))
            junk_person = _identity(people_rng, style) if people_rng.random() < 0.5 else None
            image = renderer.render(junk_person, camera, junk=True)
            yield RenderedImage(image, "gallery", -1, camera)
