"""Curation: write SQL over the curation views, preview the rows, freeze them as a dataset,
list datasets and export one (JSONL or Parquet).

The query runs through `kap.platform.curation.query.run_query` on the read-only role (one
statement, a timeout, a row cap); a refused query shows its reason. Saving is the Celery task
`kap.curation.create_dataset`, run by a worker.
"""

from __future__ import annotations

import streamlit as st

from kap.platform.curation.datasets import FORMATS, DatasetInfo, export_bytes, list_datasets
from kap.platform.curation.query import run_query
from kap.platform.errors import CurationError, QueryRefused
from kap.ui import actions, provenance_view, stores

st.title("Curation")
WAIT_S = 60.0
MAX_ROWS = 1000
EXAMPLE = """SELECT trajectory_id, domain, question, final_answer, correct, n_turns, n_tokens
FROM curation.trajectory_summary
WHERE correct
ORDER BY n_tokens DESC
LIMIT 100"""

engine = stores.engine()
sql = st.text_area("SQL", value=EXAMPLE, height=180, key="sql")
if st.button("Run", type="primary"):
    try:
        result = run_query(engine, sql, max_rows=MAX_ROWS)
    except QueryRefused as exc:
        st.session_state.pop("preview", None)
        st.error(f"Refused: {exc}")
    else:
        st.session_state["preview"] = (sql, result)

if (preview := st.session_state.get("preview")) and preview[0] == sql:
    result = preview[1]
    st.dataframe([dict(zip(result.columns, row, strict=True)) for row in result.rows],
                 hide_index=True)  # fmt: skip
    capped = f" (capped at {MAX_ROWS}: truncated)" if result.truncated else ""
    st.caption(f"{len(result.rows)} rows{capped} in {result.elapsed_ms:.0f} ms")

    st.subheader("Save as a dataset")
    st.caption("The query must select `trajectory_id`; the snapshot is frozen with a content "
               "hash over its items.")  # fmt: skip
    name = st.text_input("Dataset name", placeholder="e.g. musique-correct-long")
    if st.button("Freeze as dataset", disabled=not name.strip()):
        outcome = actions.send(actions.CREATE_DATASET, [name.strip(), sql], timeout_s=WAIT_S)
        if outcome.answered and outcome.error is None:
            made = outcome.result
            st.success(f"Dataset {made['name']} v{made['version']}: {made['row_count']} rows, "
                       f"hash {made['content_hash'][:16]}… (task {outcome.task_id})")  # fmt: skip
        else:
            st.error(outcome.message(WAIT_S))

# ---- datasets: list, export, trace ----


def show_datasets(datasets: list[DatasetInfo]) -> None:
    st.dataframe([{"name": d.name, "version": d.version, "rows": d.row_count,
                   "hash": d.content_hash, "frozen": d.frozen, "frozen_at": d.frozen_at,
                   "created_at": d.created_at} for d in datasets], hide_index=True)  # fmt: skip
    labels = {(d.name, d.version): f"{d.name} v{d.version} ({d.row_count} rows)"
              for d in datasets}  # fmt: skip
    key_col, fmt_col = st.columns([3, 1])
    chosen = key_col.selectbox("Dataset", list(labels), format_func=labels.__getitem__)
    fmt = fmt_col.radio("Format", FORMATS, horizontal=True)
    if chosen is None or fmt is None:
        return
    name, version = chosen
    st.download_button(
        f"Export {name} v{version} as {fmt}",
        data=lambda: export_bytes(engine, name, version, fmt),  # built when clicked
        file_name=f"{name}-v{version}.{fmt}",
        mime="application/jsonl" if fmt == "jsonl" else "application/vnd.apache.parquet",
    )
    st.code(next(d.sql for d in datasets if (d.name, d.version) == chosen), language="sql")


def show_trace() -> None:
    """A dataset item (or trajectory) followed to its trajectory, evidence and graph nodes."""
    ref = st.text_input("Trace an item", placeholder="NAME@VERSION#POSITION or a trajectory id")
    if not ref.strip():
        return
    try:
        found = provenance_view.follow(ref.strip())
    except CurationError as exc:
        st.error(str(exc))
        return
    provenance_view.show(found, link_trajectory=True)


st.header("Datasets")
if datasets := list_datasets(engine):
    show_datasets(datasets)
else:
    st.caption("No dataset yet.")
st.subheader("Provenance")
show_trace()
