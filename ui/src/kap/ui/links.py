"""Links between the explorer's pages, carried by query parameters, so that every view can be
opened from a URL (`/graph?entity=ID`, `/graph?chunk=ID`, `/trajectories?trajectory=ID`).
"""

from __future__ import annotations

import streamlit as st

# Page files, relative to the main script (what `st.page_link` takes).
GRAPH = "app_pages/graph.py"
TRAJECTORIES = "app_pages/trajectories.py"
CAMPAIGNS = "app_pages/campaigns.py"


def param(name: str) -> str | None:
    """One query parameter of the current URL, or None."""
    value = st.query_params.get(name)
    return str(value) if value else None


def to_entity(entity_id: str, label: str) -> None:
    st.page_link(GRAPH, label=label, icon=":material/hub:", query_params={"entity": entity_id})


def to_chunk(chunk_id: str, label: str | None = None) -> None:
    st.page_link(GRAPH, label=label or f"chunk {chunk_id[:12]}", icon=":material/article:",
                 query_params={"chunk": chunk_id})  # fmt: skip


def to_search(name: str, domain: str | None = None) -> None:
    params = {"q": name} | ({"domain": domain} if domain else {})
    st.page_link(GRAPH, label=f"find “{name}”", icon=":material/search:", query_params=params)


def to_trajectory(trajectory_id: str, label: str | None = None) -> None:
    label = label or f"trajectory {trajectory_id[:8]}"
    st.page_link(TRAJECTORIES, label=label, icon=":material/timeline:",
                 query_params={"trajectory": trajectory_id})  # fmt: skip
