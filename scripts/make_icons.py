"""Draw the 16x16 PNG icons of the cellseg KNIME nodes and category into ``icons/`` (Pillow only).

Run from the repository root: ``python scripts/make_icons.py``. The PNGs are committed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw

ICONS = Path(__file__).resolve().parent.parent / "icons"
SIZE = 16
NUCLEUS = (90, 170, 255, 255)
NUCLEUS_2 = (120, 220, 140, 255)
OUTLINE = (20, 60, 130, 255)
DARK = (60, 60, 60, 255)
ACCENT = (240, 150, 40, 255)
RED = (220, 60, 60, 255)

Draw = ImageDraw.ImageDraw


def nucleus(d: Draw, box: tuple[int, int, int, int], fill: tuple = NUCLEUS) -> None:
    d.ellipse(box, fill=fill, outline=OUTLINE)


def star(d: Draw, cx: int, cy: int, r: int) -> None:
    """A star-convex polygon with rays, StarDist's signature shape."""
    import math

    pts = [(cx + (r if k % 2 == 0 else r * 0.6) * math.cos(k * math.pi / 4),
            cy + (r if k % 2 == 0 else r * 0.6) * math.sin(k * math.pi / 4)) for k in range(8)]
    d.polygon(pts, fill=NUCLEUS, outline=OUTLINE)
    for x, y in pts[::2]:
        d.line([(cx, cy), (x, y)], fill=OUTLINE)


def category(d: Draw) -> None:
    star(d, 8, 8, 7)


def nuclei_simulator(d: Draw) -> None:
    nucleus(d, (1, 1, 7, 7))
    nucleus(d, (8, 3, 14, 9), NUCLEUS_2)
    nucleus(d, (3, 8, 9, 14))
    d.point([(12, 12), (14, 14), (11, 14), (14, 11)], fill=ACCENT)


def image_reader(d: Draw) -> None:
    d.polygon([(1, 1), (10, 1), (14, 5), (14, 15), (1, 15)], fill=(245, 245, 245, 255), outline=DARK)
    nucleus(d, (4, 6, 11, 13))


def model_reader(d: Draw) -> None:
    d.rectangle((1, 3, 14, 14), fill=(250, 220, 120, 255), outline=DARK)
    d.rectangle((1, 1, 7, 3), fill=(250, 220, 120, 255), outline=DARK)
    star(d, 8, 9, 4)


def model_writer(d: Draw) -> None:
    model_reader(d)
    d.line([(11, 0), (15, 4)], fill=RED, width=2)


def learner(d: Draw) -> None:
    star(d, 6, 7, 5)
    d.line([(2, 14), (6, 12), (10, 13), (15, 8)], fill=ACCENT, width=2)


def retrainer(d: Draw) -> None:
    star(d, 7, 7, 5)
    d.arc((1, 1, 15, 15), 200, 340, fill=ACCENT, width=2)
    d.polygon([(13, 3), (15, 6), (11, 6)], fill=ACCENT)


def predictor(d: Draw) -> None:
    d.rectangle((0, 0, 15, 15), fill=(30, 30, 30, 255))
    nucleus(d, (2, 2, 8, 8), NUCLEUS)
    nucleus(d, (8, 7, 14, 13), NUCLEUS_2)


def scorer(d: Draw) -> None:
    d.ellipse((1, 2, 10, 11), outline=OUTLINE, width=2)
    d.ellipse((5, 5, 14, 14), outline=ACCENT, width=2)


def image_tiler(d: Draw) -> None:
    d.rectangle((0, 0, 15, 15), fill=(235, 235, 235, 255), outline=DARK)
    d.line([(8, 0), (8, 15)], fill=ACCENT)
    d.line([(0, 8), (15, 8)], fill=ACCENT)
    nucleus(d, (5, 5, 11, 11))


def tile_merger(d: Draw) -> None:
    d.rectangle((0, 0, 6, 6), fill=(235, 235, 235, 255), outline=DARK)
    d.rectangle((9, 0, 15, 6), fill=(235, 235, 235, 255), outline=DARK)
    d.rectangle((0, 9, 6, 15), fill=(235, 235, 235, 255), outline=DARK)
    d.rectangle((9, 9, 15, 15), fill=(235, 235, 235, 255), outline=DARK)
    nucleus(d, (4, 4, 11, 11))


DRAWINGS: dict[str, Callable[[Draw], None]] = {
    "category": category,
    "nuclei_simulator": nuclei_simulator,
    "image_reader": image_reader,
    "model_reader": model_reader,
    "learner": learner,
    "retrainer": retrainer,
    "predictor": predictor,
    "scorer": scorer,
    "model_writer": model_writer,
    "image_tiler": image_tiler,
    "tile_merger": tile_merger,
}


def main() -> None:
    ICONS.mkdir(exist_ok=True)
    for name, draw in DRAWINGS.items():
        img = Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 0))
        draw(ImageDraw.Draw(img))
        img.save(ICONS / f"{name}.png", optimize=True)
        print(ICONS / f"{name}.png")


if __name__ == "__main__":
    main()
