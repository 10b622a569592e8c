"""Trajectories: filter, pick one, read its step timeline one page at a time.

URL parameter `trajectory` opens one directly. Only the current page of steps is read and
drawn, so a trajectory of hundreds of steps opens as fast as a short one.
"""

from __future__ import annotations

import json

import streamlit as st

from kap.ui import links, provenance_view, stores
from kap.ui import trajectory_data as data
from kap.ui.queries import Row

st.title("Trajectories")
db = stores.db()
opts = data.options(db)

# ---- filters and the list ----

campaign_names = {c["id"]: c["name"] for c in opts["campaigns"]}
with st.expander("Filters", expanded=True):
    a, b, c = st.columns(3)
    campaign = a.selectbox("Campaign", [None, *campaign_names], format_func=lambda i: (
        "any" if i is None else f"{campaign_names[i]} ({i[:8]})"))  # fmt: skip
    domain = b.selectbox("Domain", [None, *opts["domains"]], format_func=lambda d: d or "any")
    correct = c.selectbox("Correct", [None, True, False], format_func=lambda v: (
        "any" if v is None else ("yes" if v else "no")))  # fmt: skip
    d, e, f = st.columns(3)
    status = d.selectbox("Status", [None, *opts["statuses"]], format_func=lambda s: s or "any")
    min_turns = e.number_input("Min turns", 0, 1000, value=0)
    text = f.text_input("Question contains")
filters = data.Filters(campaign_id=campaign, domain=domain, correct=correct, status=status,
                       min_turns=int(min_turns), text=text)  # fmt: skip
listed = data.trajectories(db, filters)
st.caption(f"{len(listed)} trajectories" + (" (the newest 200)" if len(listed) >= 200 else ""))
table = st.dataframe(
    listed, hide_index=True, on_select="rerun", selection_mode="single-row", key="list",
    column_order=("campaign", "domain", "question", "final_answer", "gold_answer", "correct",
                  "reward", "status", "n_turns", "n_tokens", "model", "trajectory_id"),
)  # fmt: skip
picked = table.selection.rows
if picked:
    chosen = listed[picked[0]]["trajectory_id"]
    if chosen != links.param("trajectory"):
        st.query_params["trajectory"] = chosen

trajectory_id = links.param("trajectory")
if not trajectory_id:
    st.info("Select a trajectory in the table to read it.")
    st.stop()
traj = data.trajectory(db, trajectory_id)
if traj is None:
    st.warning(f"No trajectory {trajectory_id}.")
    st.stop()

# ---- the selected trajectory ----

st.header(traj["question"])
cols = st.columns(5)
cols[0].metric("Status", traj["status"])
cols[1].metric("Turns", traj["n_turns"])
cols[2].metric("Tokens", f"{traj['n_tokens']:,}")
cols[3].metric("Model", traj["model"])
cols[4].metric("Sample", traj["sample_index"])
st.markdown(f"**Final answer:** {traj['final_answer'] or '—'}  \n**Gold answer:** "
            f"{traj['gold_answer']}  \n**Campaign:** {traj['campaign']} · **domain** "
            f"{traj['domain']} · **task** `{traj['task_id']}`")  # fmt: skip

for v in data.verdicts(db, trajectory_id):
    mark = "correct" if v["correct"] else "incorrect"
    st.markdown(f"**Verdict** ({v['verifier']} v{v['verifier_version']}): {mark}, "
                f"reward {v['reward']:.3f}")  # fmt: skip
    st.dataframe([{"component": k, "value": val} for k, val in v["components"].items()],
                 hide_index=True)  # fmt: skip

read_ids = (traj["meta"] or {}).get("read_chunk_ids") or []
if read_ids:
    with st.expander(f"Evidence read: {len(read_ids)} chunks"):
        for cid in read_ids[:50]:
            links.to_chunk(cid)


with st.expander("Provenance: steps → evidence chunks → graph entities"):
    # Off until asked: a trace reads every step and goes to Neo4j.
    if st.toggle("Trace", key=f"trace-{trajectory_id}"):
        provenance_view.show(provenance_view.follow(trajectory_id))

# ---- the step timeline, one page at a time ----


def show_step(step: Row, domain: str) -> None:
    head = f"**t={step['t']}** · {step['role']}"
    if step["tool"]:
        head += f" · `{step['tool']}`"
    head += f" · {step['tokens']} tokens"
    if step["latency_ms"] is not None:
        head += f" · {step['latency_ms']} ms"
    flags = [k for k in ("error", "malformed", "repeat", "no_tool_call")
             if (step["checks"] or {}).get(k)]  # fmt: skip
    if flags:
        head += " · ⚠ " + ", ".join(flags)
    with st.container(border=True):
        st.markdown(head)
        if step["content"]:
            st.text(step["content"][:2000])
        if step["tool"]:
            st.code(json.dumps(step["args"], ensure_ascii=False, indent=1), language="json")
        obs = step["observation"] or ""
        if len(obs) > data.LONG_OBSERVATION:
            with st.expander(f"Observation ({len(obs):,} characters)"):
                st.text(obs)
        elif obs:
            st.text(obs)
        evidence = data.read_chunk_ids(step)
        for cid in evidence[:10]:
            links.to_chunk(cid, f"evidence {cid[:12]}")
        if step["tool"] == "graph" and (step["args"] or {}).get("name"):
            links.to_search(str(step["args"]["name"]), domain)


n_pages = data.pages(traj["n_steps"])
st.subheader(f"Steps ({traj['n_steps']}, {traj['step_tokens']:,} completion tokens)")
page = st.number_input(f"Page (of {n_pages}, {data.PAGE_SIZE} steps each)", 1, n_pages,
                       value=1, key=f"page-{trajectory_id}")  # fmt: skip
steps = data.steps_page(db, trajectory_id, int(page) - 1)
st.caption(f"Steps {steps[0]['t'] if steps else 0} to {steps[-1]['t'] if steps else 0}")
for step in steps:
    show_step(step, traj["domain"])
