#!/usr/bin/env python3
"""Draw the bundled sample images of the web demo (crates/flamingo-server/assets/samples/*.png).

The pictures are drawn from scratch with Pillow primitives (no photographs, no third-party artwork),
so they carry the repository's own licence. Output is deterministic for a given Pillow version.

    python3 -m venv /work/venvs/demo && /work/venvs/demo/bin/pip install Pillow   # the committed PNGs were made with Pillow 13.0.0
    /work/venvs/demo/bin/python tests/browser/make-samples.py
"""
import pathlib

from PIL import Image, ImageDraw

OUT = pathlib.Path(__file__).resolve().parents[2] / "crates/flamingo-server/assets/samples"
SIZE = 224


def save(img: Image.Image, name: str, colors: int = 48) -> None:
    # A small palette keeps every file well under 40 KB.
    path = OUT / f"{name}.png"
    img.convert("RGB").quantize(colors=colors, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    print(f"{path.relative_to(OUT.parents[3])}: {path.stat().st_size} bytes")


def shapes() -> None:
    im = Image.new("RGB", (SIZE, SIZE), (246, 244, 238))
    d = ImageDraw.Draw(im)
    d.ellipse((20, 24, 110, 114), fill=(214, 40, 40), outline=(120, 20, 20), width=3)
    d.rectangle((122, 40, 200, 118), fill=(30, 90, 200), outline=(15, 45, 110), width=3)
    d.polygon([(112, 130), (60, 204), (164, 204)], fill=(245, 196, 30), outline=(140, 105, 0))
    save(im, "shapes", colors=24)


def sunset() -> None:
    im = Image.new("RGB", (SIZE, SIZE))
    d = ImageDraw.Draw(im)
    horizon = 140
    top, bottom = (70, 40, 120), (250, 150, 60)
    for y in range(horizon):
        t = y / (horizon - 1)
        d.line([(0, y), (SIZE, y)], fill=tuple(round(a + (b - a) * t) for a, b in zip(top, bottom)))
    d.ellipse((72, 92, 152, 172), fill=(255, 214, 90))
    d.rectangle((0, horizon, SIZE, SIZE), fill=(30, 60, 110))
    for i, y in enumerate(range(horizon + 8, SIZE, 12)):
        half = 34 - i * 3
        if half > 4:
            d.line([(112 - half, y), (112 + half, y)], fill=(250, 190, 80), width=3)
    save(im, "sunset")


def house() -> None:
    im = Image.new("RGB", (SIZE, SIZE), (150, 205, 245))
    d = ImageDraw.Draw(im)
    d.rectangle((0, 160, SIZE, SIZE), fill=(70, 160, 70))
    d.ellipse((170, 18, 210, 58), fill=(255, 220, 60))
    d.rectangle((56, 100, 168, 180), fill=(235, 225, 200), outline=(90, 70, 50), width=2)
    d.polygon([(44, 102), (112, 46), (180, 102)], fill=(190, 40, 40), outline=(100, 20, 20))
    d.rectangle((98, 130, 126, 180), fill=(110, 70, 40))
    d.rectangle((68, 116, 90, 138), fill=(120, 180, 230), outline=(90, 70, 50), width=2)
    d.rectangle((136, 116, 158, 138), fill=(120, 180, 230), outline=(90, 70, 50), width=2)
    save(im, "house", colors=24)


def cat() -> None:
    im = Image.new("RGB", (SIZE, SIZE), (226, 238, 222))
    d = ImageDraw.Draw(im)
    fur, dark = (240, 150, 60), (90, 50, 20)
    d.polygon([(50, 96), (62, 28), (110, 70)], fill=fur, outline=dark)
    d.polygon([(174, 96), (162, 28), (114, 70)], fill=fur, outline=dark)
    d.ellipse((40, 56, 184, 196), fill=fur, outline=dark, width=3)
    for cx in (84, 140):
        d.ellipse((cx - 14, 100, cx + 14, 128), fill=(250, 250, 240), outline=dark)
        d.ellipse((cx - 5, 104, cx + 5, 124), fill=(20, 20, 20))
    d.polygon([(104, 142), (120, 142), (112, 152)], fill=(220, 90, 110))
    d.arc((96, 146, 114, 166), 0, 180, fill=dark, width=2)
    d.arc((110, 146, 128, 166), 0, 180, fill=dark, width=2)
    for side in (-1, 1):
        for k in (-1, 0, 1):
            x0 = 112 + side * 22
            x1 = 112 + side * 78
            y0 = 150 + k * 6
            d.line([(x0, y0), (x1, y0 + k * 10 - 2)], fill=dark, width=2)
    save(im, "cat", colors=24)


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    shapes()
    sunset()
    house()
    cat()
