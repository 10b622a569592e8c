"""Campaigns: status and item progress, one campaign's detail, launch from a config, cancel.

Launch and cancel are Celery tasks run by a worker (`kap.ui.actions`): the page only sends
them and shows what came back.
"""

from __future__ import annotations

import json

import streamlit as st

from kap.ui import actions, queries, stores

st.title("Campaigns")
db = stores.db()
WAIT_S = 20.0

listed = queries.campaigns(db)
st.dataframe(listed, hide_index=True, column_order=(
    "name", "status", "domains", "items", "finished", "pending", "queued", "done", "rejected",
    "failed", "cancelled", "created_at", "finished_at", "id"))  # fmt: skip

# ---- one campaign ----

names = {c["id"]: f"{c['name']} · {c['status']} · {c['id'][:8]}" for c in listed}
chosen = st.selectbox("Campaign", list(names), format_func=names.__getitem__) if names else None
if chosen and (detail := queries.campaign(db, chosen)):
    cols = st.columns(4)
    cols[0].metric("Status", detail["status"])
    cols[1].metric("Tasks accepted", detail["accepted"])
    cols[2].metric("Tasks rejected", detail["rejected"])
    cols[3].metric("Trajectories", detail["trajectories"])
    row = next(c for c in listed if c["id"] == chosen)
    if row["items"]:
        st.progress(row["finished"] / row["items"],
                    text=f"{row['finished']}/{row['items']} items finished")  # fmt: skip
    left, right = st.columns(2)
    with left:
        st.markdown("**Rejections by criterion**")
        rejections = queries.campaign_rejections(db, chosen)
        if rejections:
            st.dataframe(rejections, hide_index=True)
        else:
            st.caption("No task failed a criterion.")
        st.markdown("**Config**")
        st.code(json.dumps(detail["config"], indent=2), language="json")
    with right:
        st.markdown("**Items**")
        st.dataframe(queries.campaign_items(db, chosen), hide_index=True, height=360)
    if detail["status"] in queries.OPEN_STATES and st.button("Cancel this campaign"):
        outcome = actions.send(actions.CANCEL_CAMPAIGN, [chosen], timeout_s=WAIT_S)
        if outcome.answered and outcome.error is None:
            st.success(f"Cancelled: {outcome.result} open items cancelled "
                       f"(task {outcome.task_id}).")  # fmt: skip
            queries.campaigns.clear()
        else:
            st.error(outcome.message(WAIT_S))

# ---- launch ----

st.header("Launch a campaign")
source = st.radio("Config from", ["a file in configs/campaigns", "upload", "paste"],
                  horizontal=True)  # fmt: skip
text = ""
if source == "upload":
    upload = st.file_uploader("Campaign YAML", type=["yaml", "yml"])
    text = upload.getvalue().decode("utf-8", errors="replace") if upload else ""
elif source == "paste":
    text = st.text_area("Campaign YAML", height=200,
                        placeholder="name: my-campaign\ndomain: musique\ntasks: 10\n")  # fmt: skip
else:
    files = actions.config_files()
    if files:
        path = st.selectbox("Config file", files, format_func=lambda p: p.name)
        text = path.read_text(encoding="utf-8") if path else ""
    else:
        st.caption("No configs/campaigns/ folder here: upload or paste a config.")
if text:
    st.code(text, language="yaml")
if st.button("Launch", type="primary", disabled=not text.strip()):
    try:
        config = actions.parse_config(text)
    except ValueError as exc:
        st.error(str(exc))
    else:
        outcome = actions.send(actions.LAUNCH_CAMPAIGN, [config], timeout_s=WAIT_S)
        if outcome.answered and outcome.error is None:
            st.success(f"Launched campaign {outcome.result} (task {outcome.task_id}).")
            queries.campaigns.clear()
        else:
            st.error(outcome.message(WAIT_S))
