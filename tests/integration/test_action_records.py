"""Action records in the real Neo4j: records and their relationships, coverage raised exactly
once per trajectory (also when the write is redelivered), and sampling that then prefers the
less-covered starts."""

from __future__ import annotations

import uuid
from typing import Any

import neo4j
import pytest

from kap.graphstore.ingest import entity_id
from kap.graphstore.sampling import START_CANDIDATES, sample_chains
from kap.platform.errors import TransientStoreError
from kap.platform.settings import Settings
from kap.workers.actions import OBSERVATION_CHARS, record_actions
from kap.workers.policy import tool_call
from kap.workers.solver import SolveResult, StepRecord, StopReason
from kap.workers.verifier import Verdict

pytestmark = pytest.mark.integration

CORRECT = Verdict({"correct": 1.0}, 0.9, correct=True)


def _first_chunk(driver: neo4j.Driver, domain: str, title: str) -> str:
    return str(driver.execute_query(
        "MATCH (c:Chunk)-[:PART_OF]->(:Document {domain: $d, title: $t}) "
        "RETURN c.id AS id ORDER BY c.ord LIMIT 1", d=domain, t=title,
    ).records[0]["id"])  # fmt: skip


def _step(t: int, calls: list[tuple[str, str]], observations: list[dict[str, Any]]) -> StepRecord:
    tool_calls = [tool_call(f"c{i}", n, a) for i, (n, a) in enumerate(calls)]
    obs = [{"is_error": False, "read_chunk_ids": [], **o} for o in observations]
    checks = {"error": any(o["is_error"] for o in obs)}
    return StepRecord(t, 100, "h", 0, None, "", tool_calls, obs, checks, 5, 0.01)


def solved(ada: str, babbage: str) -> SolveResult:
    """search + graph; visit Ada's chunk; visit Babbage's chunk + a made-up tool; answer."""
    steps = [
        _step(0, [("search", '{"query": "Ada"}'), ("graph", '{"name": "Ada"}')],
              [{"content": "x" * (3 * OBSERVATION_CHARS)}, {"content": "facts"}]),
        _step(1, [("visit", f'{{"id": "{ada}"}}')],
              [{"content": "Ada text", "read_chunk_ids": [ada]}]),
        _step(2, [("visit", f'{{"id": "{babbage}"}}'), ("teleport", "{}")],
              [{"content": "Babbage text", "read_chunk_ids": [babbage]},
               {"content": "unknown tool", "is_error": True}]),
        _step(3, [("answer", '{"text": "Charles Babbage"}')], [{"content": "recorded"}]),
    ]  # fmt: skip
    return SolveResult([], steps, "Charles Babbage", StopReason.ANSWERED,
                       read_chunk_ids=[ada, babbage])  # fmt: skip


def _one(driver: neo4j.Driver, query: str, **params: Any) -> Any:
    return driver.execute_query(query, params).records[0][0]


def _coverage(driver: neo4j.Driver, node_id: str) -> int:
    return int(_one(driver, "MATCH (n {id: $id}) RETURN coalesce(n.coverage, 0)", id=node_id))


def test_records_relationships_and_coverage_once_per_trajectory(graph: tuple) -> None:
    driver, domain = graph
    ada_chunk = _first_chunk(driver, domain, "Ada Lovelace")
    bab_chunk = _first_chunk(driver, domain, "Charles Babbage")
    entities = [entity_id(domain, "Ada Lovelace"), entity_id(domain, "Charles Babbage")]
    watched = [ada_chunk, bab_chunk, *entities]
    before = {n: _coverage(driver, n) for n in watched}
    result, tid = solved(ada_chunk, bab_chunk), f"traj-{uuid.uuid4()}"

    def record(trajectory_id: str) -> dict[str, int]:
        return record_actions(driver, domain, trajectory_id=trajectory_id, result=result,
                              verdict=CORRECT, verifier="search-v1",
                              evidence_entity_ids=[*entities, entities[0]])  # fmt: skip

    counts = record(tid)
    assert counts["records"] == 4 and counts["recorded"] == 1
    assert (counts["chunk_coverage"], counts["entity_coverage"]) == (2, 2)
    assert counts["nodes_created"] > 4 and counts["relationships_created"] > 4
    assert {n: _coverage(driver, n) - before[n] for n in watched} == dict.fromkeys(watched, 1)

    records = driver.execute_query(
        "MATCH (a:ActionRecord {trajectory_id: $tid}) RETURN a.id AS id, a.t AS t, "
        "a.domain AS domain, a.tools AS tools ORDER BY a.t", tid=tid).records  # fmt: skip
    assert [(r["id"], r["t"], r["domain"]) for r in records] == [
        (f"{tid}/{t}", t, domain) for t in range(4)]  # fmt: skip
    assert records[2]["tools"] == ["visit", "teleport"]
    assert _one(driver, "MATCH p = (:ActionRecord {id: $a})-[:NEXT*3]->(:ActionRecord {id: $b}) "
                "RETURN count(p)", a=f"{tid}/0", b=f"{tid}/3") == 1  # fmt: skip
    used = driver.execute_query(
        "MATCH (a:ActionRecord {trajectory_id: $tid})-[u:USED]->(t:Tool) "
        "RETURN a.t AS t, t.id AS tool, t.builtin AS builtin, u.calls AS calls ORDER BY t, tool",
        tid=tid).records  # fmt: skip
    assert [(r["t"], r["tool"], r["builtin"], r["calls"]) for r in used] == [
        (0, f"{domain}/graph", True, 1), (0, f"{domain}/search", True, 1),
        (1, f"{domain}/visit", True, 1), (2, f"{domain}/visit", True, 1),
        (3, f"{domain}/answer", True, 1)]  # fmt: skip
    assert _one(driver, "MATCH (t:Tool {id: $id}) RETURN count(t)", id=f"{domain}/teleport") == 0
    reads = driver.execute_query(
        "MATCH (a:ActionRecord {trajectory_id: $tid})-[:READ]->(c:Chunk) "
        "RETURN a.t AS t, c.id AS chunk ORDER BY t", tid=tid).records  # fmt: skip
    assert [(r["t"], r["chunk"]) for r in reads] == [(1, ada_chunk), (2, bab_chunk)]
    observed = driver.execute_query(
        "MATCH (a:ActionRecord {trajectory_id: $tid})-[r:OBSERVED]->(o:Observation) "
        "RETURN a.t AS t, r.call AS call, o.text AS text, o.chars AS chars, "
        "o.is_error AS is_error ORDER BY t, call", tid=tid).records  # fmt: skip
    calls = [(r["t"], r["call"], r["is_error"]) for r in observed]
    assert calls == [(0, 0, False), (0, 1, False), (1, 0, False), (2, 0, False), (2, 1, True),
                     (3, 0, False)]  # fmt: skip
    head = observed[0]
    assert (len(head["text"]), head["chars"]) == (OBSERVATION_CHARS, 3 * OBSERVATION_CHARS)
    checked = driver.execute_query(
        "MATCH (a:ActionRecord {trajectory_id: $tid})-[c:CHECKED_BY]->(v:Verifier) "
        "RETURN a.t AS t, c.outcome AS outcome, c.reward AS reward, v.id AS verifier",
        tid=tid).records  # fmt: skip
    assert [(r["t"], r["outcome"], r["verifier"]) for r in checked] == [
        (3, "correct", f"{domain}/search-v1")]  # fmt: skip

    # A redelivery writes nothing new and raises nothing again.
    again = record(tid)
    assert (again["recorded"], again["nodes_created"], again["relationships_created"]) == (0, 0, 0)
    assert (again["chunk_coverage"], again["entity_coverage"]) == (0, 0)
    assert {n: _coverage(driver, n) - before[n] for n in watched} == dict.fromkeys(watched, 1)
    assert _one(driver, "MATCH (a:ActionRecord {trajectory_id: $tid}) RETURN count(a)",
                tid=tid) == 4  # fmt: skip

    # Another trajectory over the same region: +2 in all.
    assert record(f"traj-{uuid.uuid4()}")["recorded"] == 1
    assert {n: _coverage(driver, n) - before[n] for n in watched} == dict.fromkeys(watched, 2)


def test_a_trajectory_without_steps_leaves_nothing(graph: tuple) -> None:
    driver, domain = graph
    empty = SolveResult([], [], None, StopReason.POLICY_ERROR, error="down")
    counts = record_actions(driver, domain, trajectory_id="t-empty", result=empty,
                            verdict=CORRECT, verifier="v",
                            evidence_entity_ids=[entity_id(domain, "London")])  # fmt: skip
    assert counts["records"] == counts["entity_coverage"] == 0
    assert _coverage(driver, entity_id(domain, "London")) == 0


def test_sampling_prefers_the_starts_campaigns_left_unexplored(graph: tuple) -> None:
    driver, domain = graph
    driver.execute_query("MATCH (n {domain: $d}) REMOVE n.coverage", d=domain)
    starts = [r["id"] for r in driver.execute_query(START_CANDIDATES, domain=domain).records]
    fresh, covered = starts[0], starts[1:]
    assert covered
    answer = solved(_first_chunk(driver, domain, "Ada Lovelace"),
                    _first_chunk(driver, domain, "London"))  # fmt: skip
    for _ in range(3):  # three trajectories explored every start but one
        record_actions(driver, domain, trajectory_id=f"traj-{uuid.uuid4()}", result=answer,
                       verdict=CORRECT, verifier="v", evidence_entity_ids=covered)  # fmt: skip
    coverage = {r["id"]: r["coverage"] for r in
                driver.execute_query(START_CANDIDATES, domain=domain).records}  # fmt: skip
    assert coverage == {fresh: 0} | dict.fromkeys(covered, 3)

    def share_of_fresh(*, prefer: bool) -> float:
        firsts = [sample_chains(driver, domain, 1, n=1, seed=s, prefer_unexplored=prefer)[0].start
                  for s in range(120)]  # fmt: skip
        return firsts.count(fresh) / len(firsts)

    # Weights 1 / (1 + coverage): the fresh start is drawn 4x as often as each covered one.
    expected = 1 / (1 + len(covered) / 4)
    preferred, uniform = share_of_fresh(prefer=True), share_of_fresh(prefer=False)
    assert preferred > uniform + 0.15
    assert abs(preferred - expected) < 0.15
    assert abs(uniform - 1 / len(starts)) < 0.15


def test_unreachable_neo4j_is_a_transient_error(services: Settings) -> None:
    down = neo4j.GraphDatabase.driver(
        "bolt://127.0.0.1:1", auth=("neo4j", "x"), connection_timeout=1,
        max_transaction_retry_time=0.5,
    )  # fmt: skip
    with down, pytest.raises(TransientStoreError):
        record_actions(down, "d", trajectory_id="t", result=solved("a", "b"), verdict=CORRECT,
                       verifier="v")  # fmt: skip
