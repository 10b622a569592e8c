"""Overview: how much the stores hold, campaigns in progress, pass rates by domain."""

from __future__ import annotations

import streamlit as st

from kap.ui import queries, stores

st.title("Overview")

db = stores.db()
counts = queries.counts(db)
labels = {
    "campaigns": "Campaigns",
    "tasks_accepted": "Tasks accepted",
    "tasks_rejected": "Tasks rejected",
    "trajectories": "Trajectories",
    "steps": "Steps",
    "verdicts": "Verdicts",
    "datasets": "Datasets",
    "training_runs": "Training runs",
}
for row in (list(labels)[:4], list(labels)[4:]):
    for column, key in zip(st.columns(4), row, strict=True):
        column.metric(labels[key], f"{counts[key]:,}")

st.subheader("Campaigns in progress")
running = queries.campaigns(db, open_only=True)
if running:
    for c in running:
        done = c["finished"] / c["items"] if c["items"] else 0.0
        text = (f"**{c['name']}** ({c['status']}) · {c['finished']}/{c['items']} items · "
                f"{c['queued']} queued · {c['pending']} pending")  # fmt: skip
        st.progress(done, text=text)
else:
    st.caption("No campaign is pending or running.")

left, right = st.columns(2)
with left:
    st.subheader("Pass rate by domain")
    rates = queries.pass_rates(db)
    if rates:
        st.dataframe(rates, hide_index=True, column_config={
            "pass_rate": st.column_config.ProgressColumn("pass rate", format="percent",
                                                         min_value=0.0, max_value=1.0),
            "mean_reward": st.column_config.NumberColumn("mean reward", format="%.3f"),
        })  # fmt: skip
        st.caption("Over each trajectory's latest verdict.")
    else:
        st.caption("No verdicts yet.")
with right:
    st.subheader("Graph by domain")
    graph = queries.graph_counts(stores.graph())
    if graph:
        st.dataframe(graph, hide_index=True)
    else:
        st.caption("The graph is empty: ingest a corpus with `kap ingest`.")
