"""`kap ingest` and `kap graph stats|sample|neighbors` on the real MuSiQue corpus."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kap.graphstore.connection import connect
from kap.platform.settings import Settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT.parent / "shared" / "data" / "musique" / "corpus.json"
KAP = str(Path(sys.executable).parent / "kap")


def kap(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([KAP, *args], env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def musique(services: Settings, kap_env: dict[str, str]) -> Iterator[str]:
    domain = f"test-musique-{uuid.uuid4().hex[:8]}"
    result = kap(kap_env, "ingest", str(CORPUS), "--domain", domain)
    assert result.returncode == 0, result.stderr
    yield domain
    with connect(services) as driver:
        driver.execute_query("MATCH (n {domain: $d}) DETACH DELETE n", d=domain)


def stats(env: dict[str, str], domain: str) -> dict:
    result = kap(env, "graph", "stats", "--domain", domain, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_corpus_is_in_the_graph(musique: str, kap_env: dict[str, str]) -> None:
    facts = stats(kap_env, musique)
    assert facts["nodes"]["Document"] == 1890  # duplicate titles are separate paragraphs
    assert facts["nodes"]["Entity"] >= 1764  # one per distinct title, plus link targets
    assert facts["nodes"]["Chunk"] >= 1890
    assert facts["relationships"]["REL"] > 500
    assert musique in facts["domains"]


def test_ingesting_again_changes_nothing(musique: str, kap_env: dict[str, str]) -> None:
    before = stats(kap_env, musique)
    result = kap(kap_env, "ingest", str(CORPUS), "--domain", musique, "--batch-size", "77")
    assert result.returncode == 0, result.stderr
    assert stats(kap_env, musique) == before


def test_a_bad_file_names_the_line_and_writes_nothing(
    musique: str, kap_env: dict[str, str], tmp_path: Path
) -> None:
    before = stats(kap_env, musique)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"title": "Fine", "text": "A good record."}\n{"title": "Broken", "text": \n')
    result = kap(kap_env, "ingest", str(bad), "--domain", musique)
    assert result.returncode == 1
    assert "bad.jsonl:2:" in "".join(result.stderr.split())  # file:line:column
    assert "Traceback" not in result.stderr
    assert stats(kap_env, musique) == before


def test_sample_prints_chains_with_evidence(musique: str, kap_env: dict[str, str]) -> None:
    result = kap(kap_env, "graph", "sample", "--domain", musique, "--hops", "2", "--n", "3",
                 "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    chains = json.loads(result.stdout)
    assert chains and all(len(c["hops"]) == 2 for c in chains)
    assert all(hop["evidence"] for c in chains for hop in c["hops"])
    assert all(c["answers"] >= 1 for c in chains)


def test_neighbors_finds_an_entity_by_name(musique: str, kap_env: dict[str, str]) -> None:
    result = kap(kap_env, "graph", "neighbors", "Tennessee", "--domain", musique, "--hops", "1",
                 "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    region = json.loads(result.stdout)
    assert region["entity"]["name"] == "Tennessee"
    assert len(region["nodes"]) > 1 and region["relations"]


@pytest.fixture
def small_domain(services: Settings, kap_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    domain = f"test-evidence-{uuid.uuid4().hex[:8]}"
    records = json.loads(CORPUS.read_text())[:12]
    path = tmp_path / "small.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert kap(kap_env, "ingest", str(path), "--domain", domain).returncode == 0
    yield domain
    with connect(services) as driver:
        driver.execute_query("MATCH (n {domain: $d}) DETACH DELETE n", d=domain)


def test_index_build_verify_search_and_delete(
    small_domain: str, kap_env: dict[str, str], services: Settings
) -> None:
    d = small_domain
    built = kap(kap_env, "index", "build", "--domain", d)
    assert built.returncode == 0, built.stderr
    report = json.loads(kap(kap_env, "index", "verify", "--domain", d, "--json").stdout)
    assert report["ok"] and report["indexed"] == report["chunks"] > 0

    first = json.loads(CORPUS.read_text())[0]
    query = " ".join(first["text"].split()[:12])
    result = kap(kap_env, "evidence", "search", query, "--domain", d, "-k", "3", "--json")
    assert result.returncode == 0, result.stderr
    hits = json.loads(result.stdout)
    assert len(hits) == 3 and hits[0]["title"] == first["title"]
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert set(hits[0]) == {"chunk_id", "title", "score"}

    with connect(services) as driver:
        doc = driver.execute_query(
            "MATCH (c:Chunk {id: $c})-[:PART_OF]->(doc) RETURN doc.id AS id", c=hits[0]["chunk_id"]
        ).records[0]["id"]
    deleted = kap(kap_env, "graph", "delete", doc, "--domain", d)
    assert deleted.returncode == 0, deleted.stderr
    after = json.loads(kap(kap_env, "index", "verify", "--domain", d, "--json").stdout)
    assert after["ok"] and after["indexed"] < report["indexed"]
    again = json.loads(kap(kap_env, "evidence", "search", query, "--domain", d, "-k", "3",
                           "--json").stdout)  # fmt: skip
    assert hits[0]["chunk_id"] not in {h["chunk_id"] for h in again}


def test_ingest_keeps_the_index_current_and_verify_reports_a_stale_one(
    small_domain: str, kap_env: dict[str, str], tmp_path: Path
) -> None:
    d = small_domain
    assert kap(kap_env, "index", "build", "--domain", d).returncode == 0
    extra = tmp_path / "extra.jsonl"
    extra.write_text(
        json.dumps({"title": "Newcomer", "text": "A page added after indexing."}) + "\n"
    )
    assert kap(kap_env, "ingest", str(extra), "--domain", d, "--no-index").returncode == 0
    stale = kap(kap_env, "index", "verify", "--domain", d, "--json")
    assert stale.returncode == 1
    assert json.loads(stale.stdout)["n_missing"] == 1

    # Ingesting with an index in place embeds only what the index lacks.
    again = kap(kap_env, "ingest", str(extra), "--domain", d)
    assert again.returncode == 0, again.stderr
    assert "embedded 1 new chunks, dropped 0" in again.stderr
    assert kap(kap_env, "index", "verify", "--domain", d).returncode == 0
    rebuilt = kap(kap_env, "index", "build", "--domain", d)
    assert "embedded 0 new chunks, dropped 0" in rebuilt.stderr
    hits = json.loads(kap(kap_env, "evidence", "search", "a page added after indexing",
                          "--domain", d, "-k", "1", "--json").stdout)  # fmt: skip
    assert hits[0]["title"] == "Newcomer"
