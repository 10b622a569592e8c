"""Training: runs (stage, status, the dataset and its hash) and a run's metric curves."""

from __future__ import annotations

import altair as alt
import streamlit as st

from kap.ui import queries, stores

st.title("Training")
db = stores.db()

runs = queries.training_runs(db)
if not runs:
    st.info("No training run yet: `kap train sft ...` records one.")
    st.stop()
st.dataframe(runs, hide_index=True, column_order=(
    "name", "stage", "status", "dataset", "dataset_version", "dataset_hash", "base_model",
    "metric_points", "created_at", "finished_at", "id"))  # fmt: skip

labels = {r["id"]: f"{r['name']} · {r['stage']} · {r['status']}" for r in runs}
chosen = st.selectbox("Run", list(labels), format_func=labels.__getitem__)
metrics = queries.run_metrics(db, chosen) if chosen else []
if not metrics:
    st.caption("This run has recorded no metrics.")
    st.stop()

names = sorted({m["name"] for m in metrics})
st.caption("Curves: " + ", ".join(names))
curves = (
    alt.Chart(alt.InlineData(values=metrics))
    .mark_line(point=len(metrics) <= 200)
    .encode(x=alt.X("step:Q"), y=alt.Y("value:Q", title=None),
            tooltip=["name:N", "step:Q", "value:Q"])
    .properties(height=180, width=320)
    .facet(facet=alt.Facet("name:N", title=None), columns=3)
    .resolve_scale(y="independent")
)  # fmt: skip
st.altair_chart(curves)
