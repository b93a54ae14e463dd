"""Stand-in of ``knime.api.views``: ``NodeView`` objects returned from ``execute`` of nodes with a view.

Mirrors ``org.knime.python3.views/src/main/python/knime/api/views.py`` (KNIME 5.x), without the
KNIME UI-extension JavaScript (selection syncing / image reporting).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from typing import Any

_IMG_HTML = (
    '<!DOCTYPE html>\n<html><body style="margin:0">'
    '<img id="view-container" src="data:{mime};base64,{b64}" style="width: 100%; height: 100%;" />'
    "</body></html>\n"
)
_SVG_HTML = '<!DOCTYPE html>\n<html><body style="margin:0">{svg}</body></html>\n'


class NodeView:
    """A view of a node: an HTML document plus an optional rendered SVG (str) or PNG (bytes)."""

    def __init__(
        self,
        html: str,
        svg_or_png: str | bytes | None = None,
        render_fn: Callable[[], str | bytes] | None = None,
    ) -> None:
        self.html = html
        self._svg_or_png = svg_or_png
        self._render_fn = render_fn

    def render(self) -> str | bytes:
        if self._svg_or_png is not None:
            return self._svg_or_png
        if self._render_fn is not None:
            self._svg_or_png = self._render_fn()
            return self._svg_or_png
        raise NotImplementedError("cannot generate an SVG or PNG image from the view")


def view(obj: Any) -> NodeView:
    """Create the best-fitting NodeView for ``obj`` (HTML/SVG str, PNG/JPEG bytes, matplotlib, plotly, _repr_*_)."""
    if type(obj) is str:
        if obj.lstrip()[:15].lower() == "<!doctype html>":
            return view_html(obj)
        if "<svg" in obj[:256] and 'xmlns="http://www.w3.org/2000/svg"' in obj[:256]:
            return view_svg(obj)
    if type(obj) is bytes:
        if obj.startswith(b"\211PNG\r\n\032\n"):
            return view_png(obj)
        if obj.startswith(b"\xff\xd8\xff") and obj.endswith(b"\xff\xd9"):
            return view_jpeg(obj)
    for special in (view_matplotlib, view_plotly):
        try:
            return special(obj)
        except (ImportError, TypeError):
            pass
    try:
        return view_ipy_repr(obj)
    except ValueError:
        raise ValueError(f"no view could be created for {obj}") from None


def view_ipy_repr(obj: Any) -> NodeView:
    """NodeView from the IPython ``_repr_html_``/``_repr_svg_``/``_repr_png_``/``_repr_jpeg_`` of ``obj``."""

    def strip_md(data: Any) -> Any:
        return data[0] if isinstance(data, tuple) and len(data) == 2 else data

    renderers = [
        (k, f)
        for k, f in (("svg", view_svg), ("png", view_png), ("jpeg", view_jpeg))
        if hasattr(obj, f"_repr_{k}_")
    ]
    if hasattr(obj, "_repr_html_"):
        render_fn = getattr(obj, f"_repr_{renderers[0][0]}_") if renderers else None
        return view_html(strip_md(obj._repr_html_()), render_fn=render_fn)
    if renderers:
        kind, view_fn = renderers[0]
        return view_fn(strip_md(getattr(obj, f"_repr_{kind}_")()))
    raise ValueError("no _repr_*_ function is implemented by obj")


def view_html(
    html: str,
    svg_or_png: str | bytes | None = None,
    render_fn: Callable[[], str | bytes] | None = None,
) -> NodeView:
    """NodeView of a self-contained HTML document (optionally with a rendered SVG/PNG or a render function)."""
    return NodeView(html, svg_or_png=svg_or_png, render_fn=render_fn)


def view_svg(svg: str) -> NodeView:
    return NodeView(_SVG_HTML.format(svg=svg), svg_or_png=svg)


def view_png(png: bytes) -> NodeView:
    return NodeView(
        _IMG_HTML.format(mime="image/png", b64=base64.b64encode(png).decode("ascii")), svg_or_png=png
    )


def view_jpeg(jpeg: bytes) -> NodeView:
    return NodeView(
        _IMG_HTML.format(mime="image/jpeg", b64=base64.b64encode(jpeg).decode("ascii")), svg_or_png=jpeg
    )


def view_matplotlib(fig: Any = None, format: str = "png") -> NodeView:
    """NodeView of a matplotlib figure (default: the current figure). The figure is closed afterwards."""
    import matplotlib.figure
    import matplotlib.pyplot

    if format not in ("png", "svg"):
        raise ValueError(f'unsupported format for matplotlib view: {format}. Use "png" or "svg".')
    if fig is None:
        fig = matplotlib.pyplot.gcf()
    elif not isinstance(fig, matplotlib.figure.Figure):
        raise TypeError("the given object is not a matplotlib figure")
    buffer: io.BytesIO | io.StringIO = io.BytesIO() if format == "png" else io.StringIO()
    fig.savefig(buffer, format=format)
    matplotlib.pyplot.close(fig)
    return view_png(buffer.getvalue()) if format == "png" else view_svg(buffer.getvalue())  # type: ignore[arg-type]


def view_seaborn() -> NodeView:
    return view_matplotlib()


def view_plotly(fig: Any) -> NodeView:
    import plotly.graph_objects

    if not isinstance(fig, plotly.graph_objects.Figure):
        raise TypeError("the given figure is not a plotly figure")
    return view_html(fig.to_html(), render_fn=lambda: fig.to_image("png"))
