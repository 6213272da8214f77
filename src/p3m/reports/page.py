"""Building blocks of a self-contained HTML page: escaped elements, thumbnails, heat maps, histograms.

Every string reaches the page through :func:`element` (or :func:`escape`),
which escapes it unless it is :class:`Html` built here, so a file name or an
error message is always shown as text. A page has no script and loads
nothing: images are data URIs and its Content-Security-Policy forbids
scripts and every outside request.
"""
from __future__ import annotations

import base64
import html
import io
import math
from typing import Iterable, Sequence, Union

import cv2
import numpy as np
from PIL import Image, ImageDraw

THUMBNAIL_SIZE = 256
_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
_VOID = frozenset({"img", "meta", "br"})
_SVG_SHAPES = frozenset({"rect", "line"})


class Html(str):
    """A fragment of HTML that is already escaped (made by this module only)."""


Content = Union[Html, str, int, float, None]


def escape(value: Content) -> Html:
    """``value`` as HTML text: ``Html`` kept, anything else escaped (quotes included), None empty."""
    if isinstance(value, Html):
        return value
    return Html("" if value is None else html.escape(str(value), quote=True))


def join(parts: Iterable[Content]) -> Html:
    return Html("".join(escape(part) for part in parts))


def element(tag: str, *children: Content, **attributes: Content) -> Html:
    """``<tag attributes>children</tag>``: children escaped unless ``Html``, attribute values always escaped;
    ``class_`` gives ``class``, ``aria_label`` ``aria-label``; a None attribute is left out."""
    attrs = "".join(f' {name.rstrip("_").replace("_", "-")}="{html.escape(str(value), quote=True)}"'
                    for name, value in attributes.items() if value is not None)
    if tag in _VOID:
        return Html(f"<{tag}{attrs}>")
    if not children and tag in _SVG_SHAPES:
        return Html(f"<{tag}{attrs}/>")
    return Html(f"<{tag}{attrs}>{join(children)}</{tag}>")


def table(header: Sequence[Content], rows: Iterable[Sequence[Content]], class_: str | None = None) -> Html:
    head = element("tr", *(element("th", cell) for cell in header))
    body = join(element("tr", *(element("td", cell) for cell in row)) for row in rows)
    return element("table", element("thead", head), element("tbody", body), class_=class_)


def fitted_size(width: int, height: int, size: int = THUMBNAIL_SIZE) -> tuple[int, int]:
    """(width, height) scaled so that the long side is at most ``size`` px (never enlarged)."""
    scale = min(1.0, size / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def thumbnail(array: np.ndarray, size: int = THUMBNAIL_SIZE) -> Image.Image:
    """(H, W) uint8 or float32, or (H, W, 3) uint8 -> a Pillow image whose long side is at most ``size`` px,
    area-averaged."""
    image = Image.fromarray(np.ascontiguousarray(array))
    return image.resize(fitted_size(image.width, image.height, size), Image.Resampling.BOX)


def data_uri(image: Image.Image, photo: bool = False) -> str:
    """``image`` as a data URI: JPEG (quality 85, no chroma subsampling) for photos, PNG for maps and masks."""
    buffer = io.BytesIO()
    if photo:
        image.convert("RGB").save(buffer, format="JPEG", quality=85, subsampling=0)
    else:
        image.save(buffer, format="PNG", optimize=True)
    mime = "image/jpeg" if photo else "image/png"
    return f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def figure(image: Image.Image, caption: Content, photo: bool = False) -> Html:
    """An embedded image with a caption (its alt text too)."""
    return element("figure", element("img", src=data_uri(image, photo), alt=caption, width=image.width,
                                     height=image.height), element("figcaption", caption))


def heat_map(error: np.ndarray) -> np.ndarray:
    """(H, W) float in [0, 1] -> (H, W, 3) uint8 RGB, OpenCV's inferno colour map (0 black, 1 pale yellow)."""
    levels = np.round(np.clip(error, 0.0, 1.0) * 255.0).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(levels, cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB)


def heat_scale(width: int = 256, height: int = 12) -> Html:
    """The heat map's colour bar, 0 to 1, as an embedded image with its end labels."""
    ramp = heat_map(np.tile(np.linspace(0.0, 1.0, width), (height, 1)))
    bar = element("img", src=data_uri(Image.fromarray(ramp)), alt="colour scale of |error|, 0 to 1", width=width,
                  height=height)
    return element("div", element("span", "0"), bar, element("span", "1"), class_="scale")


def draw_boxes(image: Image.Image, boxes: Iterable[Sequence[float]], scale: float) -> Image.Image:
    """``image`` (RGB) with each (x0, y0, x1, y1) box, given in pixels of the image at ``scale`` times this
    size, outlined in red."""
    image = image.convert("RGB")
    pen = ImageDraw.Draw(image)
    for x0, y0, x1, y1 in boxes:
        pen.rectangle([x0 / scale, y0 / scale, x1 / scale, y1 / scale], outline=(255, 40, 40), width=2)
    return image


def histogram(values: Sequence[float], label: str, bins: int = 20, width: int = 300, height: int = 150) -> Html:
    """An inline SVG histogram of the finite ``values``, each bar titled with its range and count."""
    finite = np.asarray([value for value in values if math.isfinite(value)], dtype=np.float64)
    caption = element("figcaption", f"{label} ({finite.size} images)")
    if finite.size == 0:
        return element("figure", element("p", "no defined values"), caption, class_="histogram")
    counts, edges = np.histogram(finite, bins=bins)
    left, bottom, plot_w, plot_h = 40, height - 22, width - 50, height - 34
    bar_w = plot_w / bins
    tallest = max(int(counts.max()), 1)
    shapes = []
    for count, low, high, index in zip(counts, edges[:-1], edges[1:], range(bins)):
        bar_h = plot_h * count / tallest
        shapes.append(element("rect", element("title", f"{low:.4g} to {high:.4g}: {count}"),
                              x=f"{left + index * bar_w:.1f}", y=f"{bottom - bar_h:.1f}", width=f"{bar_w - 1:.1f}",
                              height=f"{bar_h:.1f}", class_="bar"))
    shapes.append(element("line", x1=left, y1=bottom, x2=left + plot_w, y2=bottom, class_="axis"))
    shapes.append(element("line", x1=left, y1=bottom, x2=left, y2=bottom - plot_h, class_="axis"))
    for x, anchor, text in ((left, "start", f"{edges[0]:.4g}"), (left + plot_w, "end", f"{edges[-1]:.4g}")):
        shapes.append(element("text", text, x=x, y=height - 6, text_anchor=anchor))
    shapes.append(element("text", tallest, x=left - 4, y=bottom - plot_h + 10, text_anchor="end"))
    shapes.append(element("text", 0, x=left - 4, y=bottom, text_anchor="end"))
    svg = element("svg", *shapes, xmlns="http://www.w3.org/2000/svg", width=width, height=height,
                  viewBox=f"0 0 {width} {height}", role="img", aria_label=f"histogram of {label}")
    return element("figure", svg, caption, class_="histogram")


_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1d1d1f; background: #fff; }
h1 { font-size: 1.5em; margin-bottom: .2em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .5em 0; } th, td { border: 1px solid #d0d0d7; padding: .25em .6em; }
th { background: #f2f2f6; text-align: left; } td { vertical-align: top; }
td.number, .numbers td { font-variant-numeric: tabular-nums; text-align: right; }
figure { display: inline-block; margin: 0 .6em .6em 0; vertical-align: top; }
figcaption { font-size: .85em; color: #555; }
figure img { display: block; background: repeating-conic-gradient(#ddd 0 25%, #fff 0 50%) 0 0 / 16px 16px; }
.histogram svg .bar { fill: #4b6fb5; } .histogram svg .axis { stroke: #333; }
.histogram svg text { font-size: 10px; fill: #333; }
.scale { display: flex; align-items: center; gap: .4em; font-size: .85em; }
.status { font-weight: 600; padding: .1em .4em; border-radius: .3em; white-space: nowrap; }
.status-ok { background: #dff3e3; color: #1b5e20; } .status-fail { background: #fde2e1; color: #8e1b13; }
.problems li, .path { font-family: ui-monospace, monospace; font-size: .9em; word-break: break-all; }
.muted { color: #666; }
.audit td:nth-child(2) { min-width: 18em; max-width: 28em; }
"""


def document(title: str, *body: Content) -> str:
    """A complete HTML document: no script, nothing loaded from elsewhere."""
    head = element("head", element("meta", charset="utf-8"),
                   element("meta", http_equiv="Content-Security-Policy", content=_POLICY),
                   element("meta", name="viewport", content="width=device-width, initial-scale=1"),
                   element("title", title), element("style", Html(_STYLE)))
    return "<!DOCTYPE html>\n" + element("html", head, element("body", *body), lang="en") + "\n"
