"""Provenance in the explorer: a trajectory (or a dataset item, `NAME@V#POSITION`) followed to
the chunks its steps read, the task's own evidence, and the graph entities behind them, each
linked to the Graph page (`kap.graphstore.provenance.trace`, what `kap trace` prints).
"""

from __future__ import annotations

import streamlit as st

from kap.graphstore.provenance import Trace, trace
from kap.ui import links, stores

SHOWN = 30  # chunks or entities listed before "... more"


def follow(ref: str) -> Trace:
    """Trace `ref` through the read-only engine and a read-routed Neo4j query."""
    return trace(stores.engine(), stores.driver(), ref, database=stores.database())


def show(found: Trace, *, link_trajectory: bool = False) -> None:
    """The trace as three lists: read chunks, the task's evidence, entities (with links)."""
    read = {c["id"] for c in found.chunks}
    gold = [c["id"] for c in found.task_chunks]
    missed = [c for c in gold if c not in read]
    st.caption(f"{len(found.steps)} steps · {len(found.chunks)} chunks read · {len(gold)} "
               f"evidence chunks of the task ({len(missed)} never read) · "
               f"{len(found.entities)} graph entities")  # fmt: skip
    if found.dataset_item is not None:
        st.caption(f"Dataset item: {found.dataset_item}")
    if link_trajectory:
        links.to_trajectory(str(found.trajectory["id"]))
    read_col, gold_col, ent_col = st.columns(3)
    with read_col:
        st.markdown("**Chunks read**")
        for chunk in found.chunks[:SHOWN]:
            links.to_chunk(str(chunk["id"]), f"{chunk.get('document') or 'chunk'}")
        _more(len(found.chunks))
    with gold_col:
        st.markdown("**The task's evidence**")
        for chunk in found.task_chunks[:SHOWN]:
            mark = "read" if chunk["id"] in read else "not read"
            links.to_chunk(str(chunk["id"]), f"{chunk.get('document') or 'chunk'} ({mark})")
        _more(len(found.task_chunks))
    with ent_col:
        st.markdown("**Graph entities**")
        for ent in found.entities[:SHOWN]:
            links.to_entity(str(ent["id"]), f"{ent['name']} (via {len(ent['via'])} chunks)")
        _more(len(found.entities))


def _more(n: int) -> None:
    if n > SHOWN:
        st.caption(f"... and {n - SHOWN} more")
    elif n == 0:
        st.caption("none")
