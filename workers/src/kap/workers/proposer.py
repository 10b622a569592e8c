"""The proposer of the search domain: relation chains of the KAG become checked tasks.

    tasks = propose(driver, "musique", hops=2, n=50, seed=0)
    [(t.question, t.gold_answer) for t in tasks if t.accepted]

A task is a k-hop chain `start -p1-> X -p2-> ... -pk-> answer` drawn by
`kap.graphstore.sampling.sample_chains`. The question names the start only; each intermediate
entity is obfuscated: described through the relation that reaches it and given a letter, never
its name ("The article on Tennessee mentions a page, X. Which page does the article on X
mention?"), so the task needs search rather than recall. An optional `Rewriter` (an LLM,
`LLMRewriter`) turns the template into fluent text; a rewrite that names the answer or an
intermediate, or drops the start, is discarded and the template kept (`region["rewrite"]`
says which happened and why).

The paper's five criteria, each recorded with a reason:
- verifiable: the gold answer or an alias occurs in the text of the last hop's evidence chunks;
- valid: every hop's relation, re-read by id, still joins the same two entities by the same
  predicate;
- process_informative: at least two hops; no single chunk holds the start and the answer
  together (a chunk holds an entity when it MENTIONS it or belongs to the entity's own page;
  evidence chunks are also read for both names); neither the answer nor an intermediate is
  named in the question;
- evidence_covering: every hop cites at least one chunk, and every cited chunk exists;
- unambiguous: exactly one entity is reached from the start along the chain's predicates
  (`count_satisfying`).

Near-duplicates. `fingerprint` hashes (domain, start id, predicates, answer id): two chains
through different intermediates that ask the same thing read the same and share it. A task is
dropped when its fingerprint is in `seen` or already proposed, or when the Jaccard similarity
of its normalized question's word trigrams to an earlier task's reaches `NEAR_DUPLICATE_JACCARD`
(rewrites that converge on one text). Templates differing only in the start name stay below it.
Rejected tasks are kept with their reasons; only duplicates are dropped.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import neo4j

from kap.graphstore.sampling import Chain, count_satisfying, sample_chains
from kap.platform.errors import LLMError
from kap.platform.llm import ChatClient

KIND = "relation_chain"
CRITERIA = ("verifiable", "valid", "process_informative", "evidence_covering", "unambiguous")
LABELS = ("X", "Y", "Z", "W", "V")  # intermediates; not "A", which normalizes away as an article
NEAR_DUPLICATE_JACCARD = 0.9
_ARTICLES = frozenset({"a", "an", "the"})
OVERSAMPLE = 2  # chains drawn per task asked for, so duplicates still leave n tasks

# ---- read-only Cypher (parameters only) ----

ENTITY_NAMES = """
UNWIND $ids AS id
MATCH (e:Entity {id: id})
RETURN e.id AS id, e.name AS name, coalesce(e.aliases, []) AS aliases
"""

CHAIN_RELATIONS = """
UNWIND $hops AS hop
MATCH (s:Entity {id: hop.subject_id})-[r:REL {id: hop.rel_id}]->(o:Entity)
RETURN r.id AS rel_id, s.id AS subject_id, r.predicate AS predicate, o.id AS object_id
"""

CHUNK_TEXTS = """
UNWIND $ids AS id
MATCH (c:Chunk {id: id})
RETURN c.id AS id, c.text AS text
"""

HOLDING_CHUNKS = """
UNWIND $ids AS id
MATCH (e:Entity {id: id})
OPTIONAL MATCH (m:Chunk)-[:MENTIONS]->(e)
WITH e, collect(DISTINCT m.id) AS mentioning
OPTIONAL MATCH (own:Chunk)-[:PART_OF]->(:Document)-[:ABOUT]->(e)
WITH e, mentioning, collect(DISTINCT own.id) AS owned
RETURN e.id AS id, mentioning + owned AS chunk_ids
"""

# ---- the task ----


@dataclass(frozen=True)
class Criterion:
    passed: bool
    reason: str


@dataclass(frozen=True)
class ProposedTask:
    domain: str
    kind: str  # "relation_chain"
    question: str
    gold_answer: str
    aliases: tuple[str, ...]
    evidence: tuple[tuple[str, ...], ...]  # chunk ids supporting each hop, in hop order
    hops: tuple[dict[str, Any], ...]  # {subject_id, subject, predicate, object_id, object, rel_id}
    region: dict[str, Any]  # start id and name, k, seed, obfuscated intermediates, rewrite
    criteria: dict[str, Criterion]  # the five CRITERIA
    fingerprint: str  # near-duplicate key: the same for tasks that ask the same thing

    @property
    def accepted(self) -> bool:
        return all(c.passed for c in self.criteria.values())


@dataclass(frozen=True)
class GraphFacts:
    """What the criteria need from the graph, read once per chain (see `read_facts`)."""

    names: dict[str, tuple[str, ...]]  # entity id -> (name, *aliases)
    relations: dict[str, tuple[str, str, str]]  # rel id -> (subject id, predicate, object id)
    chunk_texts: dict[str, str]  # evidence chunk id -> text
    shared_chunks: tuple[str, ...]  # chunks holding both the start and the answer
    satisfying: int  # entities reached from the start along the predicates


# ---- templates: (a clause that introduces the unnamed object, the final question) ----

PHRASES: dict[str, tuple[str, str]] = {
    "mentions": (
        "The article on {s} mentions a page, {o}.",
        "Which page does the article on {s} mention?",
    ),
    "links_to": (
        "The article on {s} links to a page, {o}.",
        "Which page does the article on {s} link to?",
    ),
    "collaborated_with": ("{s} collaborated with someone, {o}.", "Who did {s} collaborate with?"),
    "born_in": ("{s} was born in a place, {o}.", "Where was {s} born?"),
    "was_born_in": ("{s} was born in a place, {o}.", "Where was {s} born?"),
    "located_in": ("{s} is located in a place, {o}.", "Where is {s} located?"),
    "part_of": ("{s} is part of something, {o}.", "What is {s} part of?"),
    "capital_of": ("{s} is the capital of a place, {o}.", "What is {s} the capital of?"),
    "founded_by": ("{s} was founded by someone, {o}.", "Who founded {s}?"),
    "author": ("The author of {s} is someone, {o}.", "Who is the author of {s}?"),
}
GENERIC = (
    '{s} is related by "{p}" to an entity, {o}.',
    'To which entity is {s} related by "{p}"?',
)


def phrases(predicate: str) -> tuple[str, str]:
    clause, ask = PHRASES.get(predicate, GENERIC)
    words = predicate.replace("_", " ")
    return clause.replace("{p}", words), ask.replace("{p}", words)


def render_question(start_name: str, predicates: Sequence[str]) -> str:
    """The templated question: the start named, intermediates only as letters."""
    if len(predicates) - 1 > len(LABELS):
        raise ValueError(f"at most {len(LABELS) + 1} hops, got {len(predicates)}")
    parts, subject = [], start_name
    for i, predicate in enumerate(predicates[:-1]):
        clause, _ = phrases(predicate)
        parts.append(_capitalize(clause.format(s=subject, o=LABELS[i])))
        subject = LABELS[i]
    parts.append(_capitalize(phrases(predicates[-1])[1].format(s=subject)))
    return " ".join(parts)


def _capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


# ---- text checks ----


def fold(text: str) -> str:
    """NFKC, casefolded, every non-alphanumeric character a space, no articles, one space.

    Close to how ingestion matched mentions (word boundaries at punctuation), so "South-West
    Africa" and "Africa's" hold "West Africa" and "Africa", where SQuAD's normalization, which
    deletes punctuation, would not find them."""
    chars = (c if c.isalnum() else " " for c in unicodedata.normalize("NFKC", text).casefold())
    return " ".join(w for w in "".join(chars).split() if w not in _ARTICLES)


def names_in(text: str, names: Iterable[str]) -> list[str]:
    """The names that occur in `text` as whole words, compared `fold`ed."""
    haystack = f" {fold(text)} "
    return [n for n in names if (key := fold(n)) and f" {key} " in haystack]


def shingles(text: str, k: int = 3) -> frozenset[tuple[str, ...]]:
    """The word k-grams of the folded text (the whole text when it has at most k words)."""
    words = fold(text).split()
    if len(words) <= k:
        return frozenset({tuple(words)})
    return frozenset(tuple(words[i : i + k]) for i in range(len(words) - k + 1))


def jaccard(a: frozenset[tuple[str, ...]], b: frozenset[tuple[str, ...]]) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def fingerprint(domain: str, start_id: str, predicates: Sequence[str], answer_id: str) -> str:
    """Same (domain, start, predicates, answer): the same question, whatever the path."""
    key = "\x00".join([domain, start_id, *predicates, "->", answer_id])
    return "task:" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:24]


# ---- rewriting ----


class Rewriter(Protocol):
    """Turns a templated question into fluent text with the same meaning."""

    def rewrite(self, question: str) -> str: ...


REWRITE_PROMPT = """Rewrite this question so it reads as one fluent, natural question.
Keep every proper name exactly as written, keep the letters that stand for unnamed entities
or describe those entities without naming them, add no facts and do not answer it.
Reply with the rewritten question only.

Question: {question}"""


class LLMRewriter:
    """A `Rewriter` over an OpenAI-compatible endpoint."""

    def __init__(self, client: ChatClient, *, max_tokens: int = 200) -> None:
        self.client, self.max_tokens = client, max_tokens

    def rewrite(self, question: str) -> str:
        prompt = REWRITE_PROMPT.format(question=question)
        reply = self.client.chat([{"role": "user", "content": prompt}], max_tokens=self.max_tokens)
        return str(reply.message.get("content") or "").strip()


def checked_rewrite(
    template: str, rewriter: Rewriter | None, *, start: Sequence[str], hidden: Sequence[str]
) -> tuple[str, str]:
    """(question, outcome): the rewrite if it keeps the start and names nothing hidden."""
    if rewriter is None:
        return template, "none"
    try:
        text = rewriter.rewrite(template).strip()
    except LLMError as exc:
        return template, f"fallback: rewriter failed ({exc})"
    if not text:
        return template, "fallback: empty rewrite"
    if leaked := names_in(text, hidden):
        return template, f"fallback: rewrite names {leaked[0]!r}"
    if not names_in(text, start):
        return template, "fallback: rewrite drops the start entity"
    return text, "rewritten"


# ---- the criteria (pure) ----


def _ok(reason: str) -> Criterion:
    return Criterion(passed=True, reason=reason)


def _fail(reason: str) -> Criterion:
    return Criterion(passed=False, reason=reason)


def judge(chain: Chain, question: str, facts: GraphFacts) -> dict[str, Criterion]:
    """The five criteria of one chain and its question, with a reason each."""
    return {
        "verifiable": _verifiable(chain, facts),
        "valid": _valid(chain, facts),
        "process_informative": _process_informative(chain, question, facts),
        "evidence_covering": _evidence_covering(chain, facts),
        "unambiguous": _unambiguous(facts),
    }


def _names(facts: GraphFacts, entity_id: str, fallback: str) -> tuple[str, ...]:
    return facts.names.get(entity_id) or (fallback,)


def _verifiable(chain: Chain, facts: GraphFacts) -> Criterion:
    last = chain.hops[-1]
    answers = _names(facts, last.object_id, last.object_name)
    for cid in last.evidence:
        if found := names_in(facts.chunk_texts.get(cid, ""), answers):
            return _ok(f"{found[0]!r} occurs in evidence chunk {cid}")
    return _fail(f"no evidence chunk of the last hop contains {answers[0]!r}")


def _valid(chain: Chain, facts: GraphFacts) -> Criterion:
    for i, hop in enumerate(chain.hops, 1):
        now = facts.relations.get(hop.rel_id)
        if now is None:
            return _fail(f"hop {i}: relation {hop.rel_id} is no longer in the graph")
        if now != (hop.subject_id, hop.predicate, hop.object_id):
            return _fail(f"hop {i}: relation {hop.rel_id} now joins other entities")
    return _ok(f"all {len(chain.hops)} relations hold in the graph")


def _process_informative(chain: Chain, question: str, facts: GraphFacts) -> Criterion:
    if len(chain.hops) < 2:
        return _fail(f"{len(chain.hops)} hop: a single lookup, no process")
    first, last = chain.hops[0], chain.hops[-1]
    starts = _names(facts, first.subject_id, first.subject_name)
    answers = _names(facts, last.object_id, last.object_name)
    if facts.shared_chunks:
        return _fail(f"chunk {facts.shared_chunks[0]} holds start and answer together")
    for cid in sorted({c for hop in chain.hops for c in hop.evidence}):
        text = facts.chunk_texts.get(cid, "")
        if names_in(text, starts) and names_in(text, answers):
            return _fail(f"evidence chunk {cid} names start and answer together")
    if found := names_in(question, answers):
        return _fail(f"the question contains the answer {found[0]!r}")
    for hop in chain.hops[:-1]:
        if found := names_in(question, _names(facts, hop.object_id, hop.object_name)):
            return _fail(f"the question names the intermediate {found[0]!r}")
    return _ok(f"{len(chain.hops)} hops; no chunk holds start and answer; "
                           "answer and intermediates unnamed")  # fmt: skip


def _evidence_covering(chain: Chain, facts: GraphFacts) -> Criterion:
    for i, hop in enumerate(chain.hops, 1):
        if not hop.evidence:
            return _fail(f"hop {i} ({hop.predicate}) has no evidence chunk")
        if missing := [c for c in hop.evidence if c not in facts.chunk_texts]:
            return _fail(f"hop {i}: evidence chunk {missing[0]} is not in the graph")
    counts = ", ".join(str(len(h.evidence)) for h in chain.hops)
    return _ok(f"every hop has evidence (chunks per hop: {counts})")


def _unambiguous(facts: GraphFacts) -> Criterion:
    if facts.satisfying == 1:
        return _ok("exactly one entity satisfies the chain from its start")
    return _fail(f"{facts.satisfying} entities satisfy the chain from its start")


# ---- reading the graph ----


def read_facts(driver: neo4j.Driver, chain: Chain, *, database: str = "neo4j") -> GraphFacts:
    """Everything `judge` needs about one chain, read now (not trusted from sampling)."""
    ids = [chain.start, *(h.object_id for h in chain.hops)]
    rows = driver.execute_query(ENTITY_NAMES, ids=ids, database_=database).records
    names = {r["id"]: (r["name"], *r["aliases"]) for r in rows}
    hops = [{"subject_id": h.subject_id, "rel_id": h.rel_id} for h in chain.hops]
    rows = driver.execute_query(CHAIN_RELATIONS, hops=hops, database_=database).records
    relations = {r["rel_id"]: (r["subject_id"], r["predicate"], r["object_id"]) for r in rows}
    chunk_ids = sorted({c for h in chain.hops for c in h.evidence})
    rows = driver.execute_query(CHUNK_TEXTS, ids=chunk_ids, database_=database).records
    texts = {r["id"]: r["text"] or "" for r in rows}
    ends = [chain.start, chain.answer]
    rows = driver.execute_query(HOLDING_CHUNKS, ids=ends, database_=database).records
    holding = {r["id"]: set(r["chunk_ids"]) for r in rows}
    shared = holding.get(chain.start, set()) & holding.get(chain.answer, set())
    satisfying = count_satisfying(driver, chain.start, chain.predicates, database=database)
    return GraphFacts(names, relations, texts, tuple(sorted(shared)), satisfying)


# ---- proposing ----


def build_task(
    chain: Chain, facts: GraphFacts, *, seed: int, rewriter: Rewriter | None = None
) -> ProposedTask:
    """One task from a chain and what the graph says about it; the criteria are judged here."""
    first, last = chain.hops[0], chain.hops[-1]
    start = _names(facts, first.subject_id, first.subject_name)
    answers = _names(facts, last.object_id, last.object_name)
    middle = chain.hops[:-1]
    hidden = [*answers, *(n for h in middle for n in _names(facts, h.object_id, h.object_name))]
    template = render_question(start[0], chain.predicates)
    question, outcome = checked_rewrite(template, rewriter, start=start, hidden=hidden)
    region = {
        "start_id": chain.start,
        "start": start[0],
        "k": len(chain.hops),
        "seed": seed,
        "intermediates": [
            {"label": LABELS[i], "id": h.object_id, "name": h.object_name}
            for i, h in enumerate(middle)
        ],
        "template": template,
        "rewrite": outcome,
    }
    hops = tuple({"subject_id": h.subject_id, "subject": h.subject_name, "predicate": h.predicate,
                  "object_id": h.object_id, "object": h.object_name, "rel_id": h.rel_id}
                 for h in chain.hops)  # fmt: skip
    return ProposedTask(
        domain=chain.domain,
        kind=KIND,
        question=question,
        gold_answer=last.object_name,
        aliases=tuple(a for a in answers[1:] if a != last.object_name),
        evidence=tuple(h.evidence for h in chain.hops),
        hops=hops,
        region=region,
        criteria=judge(chain, question, facts),
        fingerprint=fingerprint(chain.domain, chain.start, chain.predicates, chain.answer),
    )


class NearDuplicates:
    """The near-duplicate filter: fingerprints seen so far and the shingles of kept questions."""

    def __init__(self, seen: Collection[str] = ()) -> None:
        self.fingerprints = set(seen)
        self._kept: list[frozenset[tuple[str, ...]]] = []

    def known(self, key: str) -> bool:
        return key in self.fingerprints

    def admit(self, task: ProposedTask) -> bool:
        """Keep `task` (True) unless its fingerprint is known or its question nearly repeats."""
        sh = shingles(task.question)
        if self.known(task.fingerprint) or any(
            jaccard(sh, other) >= NEAR_DUPLICATE_JACCARD for other in self._kept
        ):
            return False
        self.fingerprints.add(task.fingerprint)
        self._kept.append(sh)
        return True


def drop_near_duplicates(
    tasks: Iterable[ProposedTask], seen: Collection[str] = ()
) -> list[ProposedTask]:
    """Tasks in order, without those whose fingerprint is seen or question nearly repeats one."""
    near = NearDuplicates(seen)
    return [task for task in tasks if near.admit(task)]


def propose(
    driver: neo4j.Driver,
    domain: str,
    *,
    hops: int,
    n: int,
    seed: int,
    prefer_unexplored: bool = False,
    seen: Collection[str] = (),
    rewriter: Rewriter | None = None,
    database: str = "neo4j",
) -> list[ProposedTask]:
    """Up to n tasks (accepted AND rejected ones, rejected keeping their reasons), deterministic
    for a seed; near-duplicates of each other or of `seen` fingerprints are dropped."""
    if n <= 0:
        return []
    chains = sample_chains(driver, domain, hops, n=OVERSAMPLE * n, seed=seed,
                           prefer_unexplored=prefer_unexplored, max_tries=max(200, 20 * n),
                           database=database)  # fmt: skip
    near, kept = NearDuplicates(seen), []
    for chain in chains:
        if near.known(fingerprint(domain, chain.start, chain.predicates, chain.answer)):
            continue  # before any read or rewrite: a known question costs nothing
        facts = read_facts(driver, chain, database=database)
        task = build_task(chain, facts, seed=seed, rewriter=rewriter)
        if near.admit(task):
            kept.append(task)
            if len(kept) == n:
                break
    return kept
