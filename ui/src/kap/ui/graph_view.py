"""The neighbourhood drawing: a spring layout from networkx, drawn with Altair.

Everything is computed in Python and shipped as a Vega-Lite spec, so the chart needs no
network (no CDN script, no tiles): edges are rules, nodes are points with tooltips, labels are
text; zoom and pan come from a scale-bound interval (`.interactive()`), and a click on a node
is the point selection `node` (field `id`) that `st.altair_chart(on_select=...)` returns.
"""

from __future__ import annotations

from typing import Any

import altair as alt
import networkx as nx  # type: ignore[import-untyped]

SELECTION = "node"
LABELS_UP_TO = 40  # nodes: beyond this only the focus and its direct neighbours are labelled


def layout(nodes: list[dict[str, Any]], edges: list[dict[str, Any]], *, seed: int = 0
           ) -> dict[str, tuple[float, float]]:  # fmt: skip
    """Node id -> (x, y): a seeded spring layout, the same picture for the same region."""
    g = nx.Graph()
    g.add_nodes_from(n["id"] for n in nodes)
    g.add_edges_from((e["source"], e["target"]) for e in edges)
    k = 1.5 / max(1, len(nodes)) ** 0.5
    pos = nx.spring_layout(g, seed=seed, k=k, iterations=80)
    return {str(n): (float(x), float(y)) for n, (x, y) in pos.items()}


def chart_data(region: dict[str, Any], focus: str) -> tuple[list[dict[str, Any]], ...]:
    """Rows for the node layer and the edge layer."""
    nodes, edges = region["nodes"], region["edges"]
    pos = layout(nodes, edges)
    names = {n["id"]: n["name"] for n in nodes}
    label_all = len(nodes) <= LABELS_UP_TO
    node_rows = [
        {"id": n["id"], "name": n["name"], "x": pos[n["id"]][0], "y": pos[n["id"]][1],
         "hop": n["hop"], "degree": n["degree"], "coverage": n["coverage"],
         "role": "focus" if n["id"] == focus else f"hop {n['hop']}",
         "label": n["name"] if label_all or n["hop"] <= 1 else ""}
        for n in nodes
    ]  # fmt: skip
    edge_rows = [
        {"x": pos[e["source"]][0], "y": pos[e["source"]][1], "x2": pos[e["target"]][0],
         "y2": pos[e["target"]][1], "predicate": e["predicate"], "source": names[e["source"]],
         "target": names[e["target"]], "evidence": e["evidence"]}
        for e in edges
    ]  # fmt: skip
    return node_rows, edge_rows


def chart(
    region: dict[str, Any], focus: str, *, height: int = 520
) -> alt.LayerChart | alt.FacetChart:
    """The interactive chart: click a node to select it; drag to pan, scroll to zoom."""
    node_rows, edge_rows = chart_data(region, focus)
    axis = alt.Axis(title=None, labels=False, ticks=False, grid=False, domain=False)
    x = alt.X("x:Q", axis=axis, scale=_padded([n["x"] for n in node_rows]))
    y = alt.Y("y:Q", axis=axis, scale=_padded([n["y"] for n in node_rows]))
    pick = alt.selection_point(name=SELECTION, fields=["id"], on="click", empty=False)
    edges = (
        alt.Chart(alt.InlineData(values=edge_rows))
        .mark_rule(color="#9aa5b1", strokeWidth=1.2)
        .encode(x=x, y=y, x2="x2:Q", y2="y2:Q",
                tooltip=["source:N", "predicate:N", "target:N", "evidence:Q"])
    )  # fmt: skip
    nodes = (
        alt.Chart(alt.InlineData(values=node_rows))
        .mark_circle(stroke="#1f2933", opacity=0.9)
        .encode(
            x=x,
            y=y,
            size=alt.Size("degree:Q", scale=alt.Scale(range=[80, 600]), legend=None),
            color=alt.Color("role:N", scale=alt.Scale(scheme="tableau10"), title=None),
            strokeWidth=alt.condition(pick, alt.value(3), alt.value(0.5)),
            tooltip=["name:N", "id:N", "hop:Q", "degree:Q", "coverage:Q"],
        )
        .add_params(pick)
    )
    labels = (
        alt.Chart(alt.InlineData(values=node_rows))
        .mark_text(align="left", dx=9, dy=-6, fontSize=11, color="#323f4b")
        .encode(x=x, y=y, text="label:N")
    )
    # The scale-bound interval (zoom, pan) sits on the first layer and drives the shared axes.
    return alt.layer(edges.interactive(), nodes, labels, height=height)


def _padded(values: list[float], margin: float = 0.2) -> alt.Scale:
    """A scale whose domain leaves room around the outermost nodes and their labels."""
    lo, hi = (min(values), max(values)) if values else (-1.0, 1.0)
    pad = max(hi - lo, 0.2) * margin
    return alt.Scale(domain=[lo - pad, hi + pad], nice=False, zero=False)


def selected(event: Any) -> str | None:
    """The node id a click selected, from `st.altair_chart(..., on_select="rerun")`'s state."""
    try:
        points = event.selection[SELECTION]
    except (AttributeError, KeyError, TypeError):
        return None
    for point in points or ():
        if isinstance(point, dict) and point.get("id"):
            return str(point["id"])
    return None
