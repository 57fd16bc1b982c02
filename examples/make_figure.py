"""Put the original, the veiled and the recovered photo side by side (used by `make demo`)."""

from __future__ import annotations

import argparse

from PIL import Image, ImageDraw


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("original")
    ap.add_argument("veiled")
    ap.add_argument("recovered")
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--width", type=int, default=480, help="width of each panel")
    a = ap.parse_args()
    panels = []
    for path, label in ((a.original, "original"), (a.veiled, "veiled (PNG)"), (a.recovered, "recovered")):
        im = Image.open(path).convert("RGB")
        h = round(im.height * a.width / im.width)
        im = im.resize((a.width, h), Image.LANCZOS)
        canvas = Image.new("RGB", (a.width, h + 22), "white")
        canvas.paste(im, (0, 22))
        ImageDraw.Draw(canvas).text((6, 5), label, fill="black")
        panels.append(canvas)
    out = Image.new("RGB", (sum(p.width for p in panels) + 8 * (len(panels) - 1),
                            max(p.height for p in panels)), "white")
    x = 0
    for p in panels:
        out.paste(p, (x, 0))
        x += p.width + 8
    out.save(a.output, quality=92)


if __name__ == "__main__":
    main()
