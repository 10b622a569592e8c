"""Every page of the explorer with `streamlit.testing.v1.AppTest`, against the real stores.

The stores hold a real scripted campaign (see conftest); each test checks what a page shows
against what SQL or Cypher says, and that no run raised (`at.exception` empty).
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from streamlit.testing.v1 import AppTest

from kap.graphstore.connection import connect
from kap.platform.settings import Settings
from tests.ui.conftest import APP, LONG_STEPS

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def open_page(page: str, params: dict[str, str] | None = None) -> AppTest:
    """The app on `page` (a file under app_pages/), with URL query parameters."""
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    if page != "overview":
        at.switch_page(f"app_pages/{page}.py")
    at.query_params.update(params or {})
    return rerun(at)


def rerun(at: AppTest) -> AppTest:
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(at: AppTest) -> str:
    """Every text the page shows (markdown, text, captions, headers, metrics), one string."""
    kinds = ("markdown", "text", "caption", "header", "subheader", "title", "success", "error",
             "warning", "info")  # fmt: skip
    parts = [e.value for kind in kinds for e in at.get(kind)]
    parts += [f"{m.label}: {m.value}" for m in at.metric]
    return "\n".join(str(p) for p in parts)


def frames(at: AppTest) -> list[Any]:
    return [d.value for d in at.dataframe]


def scalar(engine: sa.Engine, sql: str, **params: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).scalar_one()


def metric(at: AppTest, label: str) -> str:
    return next(str(m.value) for m in at.metric if m.label == label)


# ---- Overview ----


def test_overview_shows_the_stores_counts_and_pass_rates(
    app_env: dict[str, str], campaign: dict[str, Any], owner_engine: sa.Engine
) -> None:
    at = open_page("overview")
    n = scalar(owner_engine, "SELECT count(*) FROM trajectories")
    assert metric(at, "Trajectories") == f"{n:,}"
    assert metric(at, "Campaigns") == f"{scalar(owner_engine, 'SELECT count(*) FROM campaigns'):,}"
    steps = scalar(owner_engine, "SELECT count(*) FROM steps")
    assert metric(at, "Steps") == f"{steps:,}"
    rates = frames(at)[0]
    row = rates[rates["domain"] == campaign["domain"]].iloc[0]
    assert row["judged"] == campaign["trajectories"]
    assert row["pass_rate"] == pytest.approx(campaign["pass_rate"])
    graph = frames(at)[1]
    assert int(graph[graph["domain"] == campaign["domain"]]["chunks"].iloc[0]) > 0


# ---- Graph ----


@pytest.fixture(scope="module")
def region_task(campaign: dict[str, Any], owner_engine: sa.Engine) -> dict[str, Any]:
    """A proposed task of the campaign and the start entity of its region."""
    with owner_engine.connect() as conn:
        row = conn.execute(sa.text(
            "SELECT question, region ->> 'start_id' AS start_id, region ->> 'start' AS start "
            "FROM tasks WHERE campaign_id = :c AND accepted ORDER BY created_at LIMIT 1"),
            {"c": campaign["campaign_id"]}).one()  # fmt: skip
    return dict(row._mapping)


def test_graph_finds_an_entity_and_shows_what_lies_behind_it(
    app_env: dict[str, str], campaign: dict[str, Any], region_task: dict[str, Any],
    services: Settings,
) -> None:  # fmt: skip
    with connect(services) as driver:
        name, chunk_ids = driver.execute_query(
            "MATCH (e:Entity {id: $id}) OPTIONAL MATCH (c:Chunk)-[:MENTIONS|PART_OF|ABOUT*1..2]-"
            "(e) WHERE (c)-[:MENTIONS]->(e) OR (c)-[:PART_OF]->(:Document)-[:ABOUT]->(e) "
            "RETURN e.name, collect(DISTINCT c.id)",
            id=region_task["start_id"],
        ).records[0]
    at = open_page("graph", {"q": name, "domain": campaign["domain"]})
    matches = next(s for s in at.selectbox if s.label == "Matches")
    assert matches.value == region_task["start_id"]  # the exact name comes first
    assert any(h.value == name for h in at.header)
    assert at.get("arrow_vega_lite_chart") or at.get("vega_lite_chart")  # the neighbourhood
    chunks = frames(at)[0]
    assert set(chunks["id"]) == set(chunk_ids)
    assert f"Chunks: {len(chunk_ids)}" in texts(at)
    # regions: the campaign proposed a task whose chain starts here
    tasks = frames(at)[-1]
    assert region_task["question"] in set(tasks["question"])
    # more hops, more entities
    one = len(at.get("arrow_vega_lite_chart") or at.get("vega_lite_chart"))
    before = re.search(r"(\d+) entities and \d+ facts within 2 hops", texts(at))
    next(s for s in at.slider if s.label == "Hops (k)").set_value(3)
    rerun(at)
    after = re.search(r"(\d+) entities and \d+ facts within 3 hops", texts(at))
    assert one and before and after and int(after.group(1)) >= int(before.group(1))


def test_graph_opens_on_a_chunk_with_the_action_records_that_read_it(
    app_env: dict[str, str], campaign: dict[str, Any], owner_engine: sa.Engine
) -> None:
    with owner_engine.connect() as conn:
        chunk_id = conn.execute(sa.text(
            "SELECT meta -> 'read_chunk_ids' ->> 0 FROM trajectories WHERE campaign_id = :c "
            "AND jsonb_array_length(meta -> 'read_chunk_ids') > 0 LIMIT 1"),
            {"c": campaign["campaign_id"]}).scalar_one()  # fmt: skip
    at = open_page("graph", {"chunk": chunk_id})
    shown = texts(at)
    assert chunk_id in shown
    assert re.search(r"Read by [1-9]\d* trajectories", shown)


# ---- Trajectories ----


def test_trajectories_lists_the_campaign_and_opens_one_with_its_steps(
    app_env: dict[str, str], campaign: dict[str, Any], owner_engine: sa.Engine
) -> None:
    with owner_engine.connect() as conn:
        ids = set(conn.execute(sa.text("SELECT id::text FROM trajectories WHERE campaign_id = :c"),
                               {"c": campaign["campaign_id"]}).scalars())  # fmt: skip
        one = conn.execute(sa.text(
            "SELECT t.id::text AS id, k.question, t.n_turns FROM trajectories t "
            "JOIN tasks k ON k.id = t.task_id WHERE t.campaign_id = :c ORDER BY t.n_turns DESC "
            "LIMIT 1"), {"c": campaign["campaign_id"]}).one()  # fmt: skip
    at = open_page("trajectories")
    assert ids <= set(frames(at)[0]["trajectory_id"])
    at = open_page("trajectories", {"trajectory": one.id})
    assert any(h.value == one.question for h in at.header)
    steps = [m.value for m in at.markdown if m.value.startswith("**t=")]
    assert len(steps) == min(one.n_turns, 25) and steps[0].startswith("**t=0**")
    assert "Verdict" in texts(at) and at.code  # verdict components, tool-call arguments
    next(t for t in at.toggle if t.label == "Trace").set_value(True)
    rerun(at)
    assert re.search(rf"{one.n_turns} steps · [1-9]\d* chunks read", texts(at)), texts(at)


def test_a_45k_token_trajectory_opens_one_page_of_steps_at_a_time(
    app_env: dict[str, str], long_trajectory: dict[str, Any]
) -> None:
    at = open_page("trajectories", {"trajectory": long_trajectory["id"]})
    assert any(h.value == long_trajectory["question"] for h in at.header)
    shown = [m.value for m in at.markdown if m.value.startswith("**t=")]
    assert len(shown) == 25 and shown[0].startswith("**t=0**") and shown[-1].startswith("**t=24**")
    folded = [e for e in at.expander if e.label.startswith("Observation (")]
    assert len(folded) == 9  # t = 0, 3, ..., 24: the long observations
    pager = next(n for n in at.number_input if n.label.startswith("Page"))
    assert f"of {LONG_STEPS // 25}" in pager.label
    pager.set_value(2)
    rerun(at)
    shown = [m.value for m in at.markdown if m.value.startswith("**t=")]
    assert len(shown) == 25 and shown[0].startswith("**t=25**")
    next(n for n in at.number_input if n.label.startswith("Page")).set_value(12)
    rerun(at)
    shown = [m.value for m in at.markdown if m.value.startswith("**t=")]
    assert shown[-1].startswith(f"**t={LONG_STEPS - 1}**")


# ---- Campaigns ----


def test_campaigns_lists_launches_and_cancels(
    app_env: dict[str, str], campaign: dict[str, Any], owner_engine: sa.Engine
) -> None:
    at = open_page("campaigns")
    assert campaign["campaign_id"] in set(frames(at)[0]["id"])
    # Launch from a pasted config: a domain with no graph, so its items wait (failed proposals
    # go back to pending) and the campaign stays open for the cancel below.
    config = {"name": "ui-launched", "domain": "no-such-domain", "tasks": 3, "seed": 4}
    next(r for r in at.radio if r.label == "Config from").set_value("paste")
    rerun(at)
    at.text_area[0].input(yaml.safe_dump(config))
    rerun(at)
    next(b for b in at.button if b.label == "Launch").click()
    rerun(at)
    launched = re.search(r"Launched campaign ([0-9a-f-]{36})", texts(at))
    assert launched, texts(at)
    campaign_id = launched.group(1)
    assert scalar(owner_engine, "SELECT name FROM campaigns WHERE id = :c", c=campaign_id) == (
        "ui-launched"
    )
    # open, so the Overview shows it in progress (no item can finish: 0 of 3)
    progress = [p.text for p in open_page("overview").get("progress")]
    assert any("**ui-launched** (running) · 0/3 items" in text for text in progress), progress
    at = open_page("campaigns")
    picker = next(s for s in at.selectbox if s.label == "Campaign")
    picker.set_value(campaign_id)
    rerun(at)
    next(b for b in at.button if b.label == "Cancel this campaign").click()
    rerun(at)
    assert "Cancelled: 3 open items cancelled" in texts(at)
    status = scalar(owner_engine, "SELECT status FROM campaigns WHERE id = :c", c=campaign_id)
    assert status == "cancelled"


def test_a_config_the_worker_refuses_is_shown_as_its_reason(
    app_env: dict[str, str], worker: Any, owner_engine: sa.Engine
) -> None:
    at = open_page("campaigns")
    next(r for r in at.radio if r.label == "Config from").set_value("paste")
    rerun(at)
    at.text_area[0].input("name: bad\ndomain: d\ntasks: 0\n")
    rerun(at)
    next(b for b in at.button if b.label == "Launch").click()
    rerun(at)
    errors = [e.value for e in at.error]
    assert errors and "tasks" in errors[0] and "failed" in errors[0]
    assert scalar(owner_engine, "SELECT count(*) FROM campaigns WHERE name = 'bad'") == 0


# ---- Curation ----


def test_curation_previews_a_query_and_shows_a_refusal(
    app_env: dict[str, str], campaign: dict[str, Any], owner_engine: sa.Engine
) -> None:
    at = open_page("curation")
    at.text_area(key="sql").input(
        "SELECT trajectory_id, question, correct FROM curation.trajectory_summary "
        f"WHERE campaign_id = '{campaign['campaign_id']}'"
    )
    next(b for b in at.button if b.label == "Run").click()
    rerun(at)
    assert not at.error
    preview = frames(at)[0]
    assert len(preview) == campaign["trajectories"]
    assert f"{campaign['trajectories']} rows" in texts(at)
    # freeze it: the worker runs kap.curation.create_dataset
    name = f"ui-{uuid.uuid4().hex[:6]}"
    next(t for t in at.text_input if t.label == "Dataset name").input(name)
    rerun(at)
    next(b for b in at.button if b.label == "Freeze as dataset").click()
    rerun(at)
    frozen = re.search(rf"Dataset {name} v1: (\d+) rows, hash ([0-9a-f]+)", texts(at))
    assert frozen and int(frozen.group(1)) == campaign["trajectories"], texts(at)
    stored = scalar(owner_engine, "SELECT content_hash FROM datasets WHERE name = :n", n=name)
    assert stored.startswith(frozen.group(2))
    at = open_page("curation")
    assert name in set(frames(at)[0]["name"])  # listed, with an export button
    assert len(at.get("download_button")) == 1
    # provenance of its first item: the trajectory, the chunks it read, the graph behind them
    next(t for t in at.text_input if t.label == "Trace an item").input(f"{name}@1#0")
    rerun(at)
    assert re.search(r"\d+ steps · [1-9]\d* chunks read", texts(at)), texts(at)
    at.text_area(key="sql").input("DROP TABLE tasks")
    next(b for b in at.button if b.label == "Run").click()
    rerun(at)
    assert at.error and at.error[0].value.startswith("Refused:")
    assert scalar(owner_engine, "SELECT count(*) FROM tasks") > 0


# ---- Training ----


def test_training_shows_a_run_and_its_curves(
    app_env: dict[str, str], training_run: dict[str, Any]
) -> None:
    at = open_page("training")
    runs = frames(at)[0]
    assert training_run["id"] in set(runs["id"])
    picker = next(s for s in at.selectbox if s.label == "Run")
    picker.set_value(training_run["id"])
    rerun(at)
    assert "Curves: eval_loss, loss, reward" in texts(at)


# ---- every page: stores down, sign-in configured ----

PAGES = ("overview", "graph", "trajectories", "campaigns", "curation", "training")


@pytest.mark.parametrize("page", PAGES)
def test_an_unreachable_store_is_one_error_line_not_a_traceback(
    app_env: dict[str, str], page: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAP_CURATOR_URL", "postgresql+psycopg://kap_curator:x@127.0.0.1:9/kap")
    monkeypatch.setenv("KAP_NEO4J_URI", "bolt://127.0.0.1:9")
    params = {"entity": "x"} if page == "graph" else {}
    at = open_page(page, params)
    errors = [e.value for e in at.error]
    assert len(errors) == 1, errors
    assert "is unreachable" in errors[0] and "kap services up" in errors[0]
    assert ("PostgreSQL" if page != "graph" else "Neo4j") in errors[0]


def test_configured_sign_in_gates_every_page(app_env: dict[str, str]) -> None:
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.secrets["auth"] = {"client_id": "kap", "client_secret": "s", "redirect_uri":
                          "http://localhost:8501/oauth2callback", "cookie_secret": "c",
                          "server_metadata_url": "http://127.0.0.1:9/.well-known"}  # fmt: skip
    at.run()
    assert not at.exception
    assert not at.metric and not at.dataframe  # no page ran
    shown = texts(at)
    assert "Authlib" in shown or "Log in" in [b.label for b in at.button]


def test_launch_waits_a_bounded_time_and_says_when_no_worker_answers(
    app_env: dict[str, str],
) -> None:
    from kap.ui import stores
    from kap.ui.actions import CANCEL_CAMPAIGN, send

    queue = f"kap-ui-test-{uuid.uuid4().hex[:8]}"  # a queue no worker consumes
    try:
        outcome = send(CANCEL_CAMPAIGN, [str(uuid.uuid4())], timeout_s=2, queue=queue)
    finally:
        with stores.celery().connection_for_write() as conn:
            conn.default_channel.queue_delete(queue)
    assert not outcome.answered
    assert "No worker answered within 2 s" in outcome.message(2)


def test_graph_search_does_not_interpret_lucene_syntax(
    app_env: dict[str, str], campaign: dict[str, Any]
) -> None:
    at = open_page("graph", {"q": 'AND OR "( ~ ] \\', "domain": campaign["domain"]})
    assert not at.exception
    assert "No entity matches" in texts(at) or at.selectbox
