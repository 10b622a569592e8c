"""Graph: find an entity, explore its k-hop neighbourhood, and see what lies behind a node.

URL parameters: `entity` (focus), `chunk` (a chunk and the entities it mentions), `q` and
`domain` (a search). A click on a node selects it for the panels below the chart.
"""

from __future__ import annotations

import streamlit as st

from kap.ui import graph_data, graph_view, links, stores
from kap.ui.queries import Row

st.title("Graph")
graph, db = stores.graph(), stores.db()

# ---- find ----

domains = graph_data.domains(graph)
search_col, domain_col = st.columns([3, 1])
text = search_col.text_input("Find an entity", value=links.param("q") or "",
                             placeholder="a name or alias, e.g. Lake Victoria")  # fmt: skip
choices = ["all domains", *domains]
wanted = links.param("domain")
domain_choice = domain_col.selectbox(
    "Domain", choices, index=choices.index(wanted) if wanted in choices else 0
)
domain = None if domain_choice == "all domains" else domain_choice

focus = links.param("entity")
if text.strip():
    hits = graph_data.search(graph, text.strip(), domain)
    if not hits:
        st.warning(f"No entity matches “{text.strip()}”.")
    else:
        labels = {h["id"]: f"{h['name']} ({h['domain']})" for h in hits}
        ids = list(labels)
        chosen = st.selectbox("Matches", ids, format_func=labels.__getitem__,
                              index=ids.index(focus) if focus in ids else 0)  # fmt: skip
        if chosen != focus:
            focus = chosen
            st.query_params["entity"] = chosen


def show_chunk(chunk_id: str) -> str | None:
    """The chunk named in the URL, its page's entity and those it mentions; the first."""
    found = graph_data.chunk(graph, chunk_id)
    if found is None:
        st.warning(f"No chunk {chunk_id} in the graph.")
        return None
    st.subheader(f"Chunk · {found['document'] or 'no document'}")
    st.caption(f"{found['id']} · domain {found['domain']} · coverage {found['coverage']}")
    st.text(found["text"])
    entities = ([found["about"]] if found["about"] else []) + found["entities"]
    for e in entities[:20]:
        links.to_entity(e["id"], e["name"])
    records = graph_data.action_records(graph, chunk_id=chunk_id)
    st.caption(f"Read by {len({r['trajectory_id'] for r in records})} trajectories "
               f"({len(records)} action records).")  # fmt: skip
    return str(entities[0]["id"]) if entities else None


if chunk_id := links.param("chunk"):
    first = show_chunk(chunk_id)
    focus = focus or first

if not focus:
    st.info("Search for an entity, or open one from a trajectory's evidence.")
    st.stop()

center = graph_data.entity(graph, focus)
if center is None:
    st.warning(f"No entity with id {focus}.")
    st.stop()

# ---- the neighbourhood ----

k_col, cap_col = st.columns(2)
hops = k_col.slider("Hops (k)", 1, 3, value=2)
cap = cap_col.slider("Node cap", 10, 300, value=80, step=10)
region = graph_data.neighbourhood(graph, center["id"], hops, cap)
st.caption(f"{len(region['nodes'])} entities and {len(region['edges'])} facts within {hops} "
           f"hops of **{center['name']}**. Click a node to inspect it; drag to pan, scroll to "
           "zoom.")  # fmt: skip
event = st.altair_chart(
    graph_view.chart(region, center["id"]),
    on_select="rerun",
    selection_mode=graph_view.SELECTION,
    key=f"graph-{center['id']}-{hops}",
)
picked = graph_view.selected(event)
node = graph_data.entity(graph, picked) if picked else center
node = node or center
if node["id"] != center["id"] and st.button(f"Centre the graph on {node['name']}"):
    st.query_params["entity"] = node["id"]
    st.rerun()

# ---- the selected node ----

st.header(node["name"])
cols = st.columns(4)
cols[0].metric("Coverage", node["coverage"], help="Trajectories that explored this entity.")
cols[1].metric(
    "Chunks",
    node["about"] + node["mentions"],
    help=f"{node['about']} of its own page, {node['mentions']} that mention it",
)
cols[2].metric("Relations", node["relations"])
cols[3].metric("Domain", node["domain"])
if node["aliases"]:
    st.caption("Also: " + ", ".join(node["aliases"][:20]))

chunks_tab, rel_tab, rec_tab, region_tab = st.tabs(
    ["Chunks", "Relations", "Action records", "Regions and tasks"]
)
with chunks_tab:
    found = graph_data.chunks(graph, node["id"])
    if found:
        st.dataframe(found, hide_index=True, column_order=("document", "how", "excerpt",
                                                           "coverage", "chars", "id"))  # fmt: skip
    else:
        st.caption("No chunk is about or mentions this entity.")


def show_relation(r: Row) -> None:
    arrow = "→" if r["outgoing"] else "←"
    with st.expander(f"{arrow} {r['predicate']} · {r['other']} ({len(r['evidence'])} evidence)"):
        links.to_entity(r["other_id"], r["other"])
        for c in r["evidence_chunks"]:
            st.markdown(f"**{c['document'] or c['id']}**")
            st.text(c["excerpt"])
            links.to_chunk(c["id"])


with rel_tab:
    facts = graph_data.relations(graph, node["id"])
    for r in facts[:40]:
        show_relation(r)
    if len(facts) > 40:
        st.caption(f"{len(facts) - 40} more relations not shown.")
    if not facts:
        st.caption("No relations.")

with rec_tab:
    records = graph_data.action_records(graph, entity_id=node["id"])
    if records:
        st.dataframe(records, hide_index=True)
        for tid in list(dict.fromkeys(r["trajectory_id"] for r in records))[:10]:
            links.to_trajectory(tid)
    else:
        st.caption("No action record read a chunk of this entity yet.")

with region_tab:
    h_col, s_col = st.columns(2)
    region_hops = h_col.slider("Chain length", 1, 4, value=2, key="region-hops")
    seed = s_col.number_input("Seed", 0, 1_000_000, value=0, key="region-seed")
    chain = graph_data.sample_region(node["id"], region_hops, int(seed))
    if chain:
        st.markdown("Sampled region: " + " → ".join(
            [f"**{chain[0].subject_name}**"]
            + [f"*{h.predicate}* → **{h.object_name}**" for h in chain]))  # fmt: skip
    else:
        st.caption("No outgoing fact with evidence starts here.")
    members = (node["id"], *(h.object_id for h in chain))
    tasks = graph_data.region_tasks(db, tuple(dict.fromkeys(members)))
    st.subheader("Tasks proposed from regions containing these entities")
    if tasks:
        st.dataframe(tasks, hide_index=True)
    else:
        st.caption("No campaign proposed a task from these entities yet.")
