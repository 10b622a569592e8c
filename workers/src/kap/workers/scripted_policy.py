"""A deterministic agent over the search-domain tools: the weight-free baseline policy.

Its only input is the prompt: the question (the first user message) and the tool observations
that arrive after its own calls. It never sees a gold answer or gold evidence. It keeps notes
on what it has read, as a model's working memory would, so context folding does not blind it.

The plan, hop by hop, for `hops` hops (estimated from the question's relative clauses, 2-4):
1. hop 0: `search` the question, `visit` the best chunks; the question's entities are the
   titles of the hits that the question names; `graph` each of them;
2. a bridge for the next hop: among the names the graph facts and the titles of read chunks
   offer, not named in the question and not used before, the one the text read so far
   mentions most (text read in this hop counts double; a graph neighbour gets a bonus);
3. hop j > 0: `visit` the bridge's page, `search` the question with the bridge's name (a
   sub-query), `visit` the best new chunks, `graph` the bridge; then choose the next bridge.
Chain questions (their intermediates named only by a placeholder letter, X, Y, ..., as the
proposer writes them) are followed through the graph instead: `graph` the one named entity,
keep its outgoing facts whose predicate the question uses, `graph` each entity reached, hop by
hop (one hop per placeholder, plus the last), `visit` the evidence chunks of the path found and
answer with the entity at its end (the one most paths reach). Nothing but the question and
the tool results goes into it; if the chain breaks, the plan above takes over.
Answer: for "when / what year" questions the first date in the last hop's reading, for
"how many / how much" the first number there that the question does not hold; otherwise the
bridge chosen after the last hop (the entity most supported by what it read that the
question does not name); "unknown" when nothing qualifies.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kap.workers.policy import Message, PolicyReply, tool_call

_MARKERS = re.compile(r"\b(of the|where|which|that|whose|who|whom|when)\b|'s\b")
_DATE = re.compile(
    r"\b(?:\d{1,2} )?(?:January|February|March|April|May|June|July|August|September|October|"
    r"November|December)(?: \d{1,2},?)? \d{3,4}\b|\b1\d{3}\b|\b20\d{2}\b"
)
_NUMBER = re.compile(r"\b\d[\d,]*(?:\.\d+)?(?: (?:million|billion|thousand|percent|%))?")
_CAPITALIZED = re.compile(r"[A-Z][\w.'-]*(?:\s+(?:of\s+|the\s+|and\s+)?[A-Z][\w.'-]*)*")
_PAREN = re.compile(r"\s*\([^)]*\)\s*$")


def fold(text: str) -> str:
    """Lower case, accents and punctuation gone, single spaces, padded for word matches."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return " " + " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split()) + " "


def base_name(title: str) -> str:
    """'Hello Love (song)' -> 'Hello Love'."""
    return _PAREN.sub("", title).strip() or title


def mentions(name: str, text: str) -> bool:
    needle = fold(base_name(name))
    return len(needle) > 3 and needle in fold(text)


def estimate_hops(question: str) -> int:
    return max(2, min(4, 1 + len(_MARKERS.findall(question.lower()))))


@dataclass
class _Episode:
    question: str
    hops: int
    queue: deque[tuple[str, dict[str, Any], str]] = field(default_factory=deque)
    calls: dict[str, tuple[str, dict[str, Any], int]] = field(default_factory=dict)
    read: dict[str, tuple[str, str, int]] = field(default_factory=dict)  # id -> title, text, hop
    hits: list[tuple[str, str, int]] = field(default_factory=list)  # chunk id, title, hop
    neighbours: dict[str, int] = field(default_factory=dict)  # graph names -> hop found
    graphed: set[str] = field(default_factory=set)
    bridges: list[str] = field(default_factory=list)
    hop: int = 0
    phase: str = "start"
    n_calls: int = 0
    facts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # fold(entity) -> facts
    paths: list[list[dict[str, Any]]] = field(default_factory=list)  # chain mode: facts so far


class ScriptedPolicy:
    """`Policy` that plays the plan above; one instance serves one episode at a time."""

    def __init__(
        self, *, k: int = 5, visits_per_search: int = 3, max_graph: int = 2,
        max_chain_width: int = 8,
    ) -> None:  # fmt: skip
        self.k, self.visits_per_search, self.max_graph = k, visits_per_search, max_graph
        self.max_chain_width = max_chain_width  # entities graphed per hop in chain mode
        self._ep: _Episode | None = None

    def next_message(
        self, messages: Sequence[Message], tools: Sequence[dict[str, Any]]
    ) -> PolicyReply:
        users = [m for m in messages if m.get("role") == "user"]
        question = str(users[0].get("content") or "") if users else ""
        if self._ep is None or messages[-1] is users[0] or question != self._ep.question:
            self._ep = _Episode(question, estimate_hops(question))
        ep = self._ep
        for message in _since_last_assistant(messages):
            if message.get("role") == "tool" and message.get("tool_call_id") in ep.calls:
                self._observe(ep, ep.calls.pop(str(message["tool_call_id"])),
                              str(message.get("content") or ""))  # fmt: skip
        while not ep.queue:
            self._plan(ep)
        name, args, why = ep.queue.popleft()
        ep.n_calls += 1
        call_id = f"call_{ep.n_calls}"
        ep.calls[call_id] = (name, args, ep.hop)
        call = tool_call(call_id, name, json.dumps(args, ensure_ascii=False))
        return PolicyReply({"role": "assistant", "content": why, "tool_calls": [call]})

    # ---- reading observations ----

    def _observe(self, ep: _Episode, call: tuple[str, dict[str, Any], int], content: str) -> None:
        name, _, hop = call
        try:
            body = json.loads(content)
        except ValueError:
            return
        if not isinstance(body, dict) or "error" in body:
            return
        if name == "search":
            ep.hits += [(r["chunk_id"], r.get("title") or "", hop) for r in body["results"]]
            fresh = [r["chunk_id"] for r in body["results"] if r["chunk_id"] not in ep.read]
            for chunk_id in fresh[: self.visits_per_search]:
                ep.queue.append(("visit", {"id": chunk_id}, "Reading a promising passage."))
        elif name == "visit":
            for chunk in body["chunks"]:
                ep.read.setdefault(chunk["chunk_id"], (chunk["title"], chunk["text"], hop))
        elif name == "graph":
            ep.facts[fold(body["entity"])] = list(body["facts"])
            for fact in body["facts"]:
                for other in (fact["subject"], fact["object"]):
                    if other and fold(other) != fold(body["entity"]):
                        ep.neighbours.setdefault(other, hop)

    # ---- planning ----

    def _plan(self, ep: _Episode) -> None:
        if ep.phase == "start":
            ep.queue.append(("search", {"query": ep.question, "k": self.k},
                             "Searching for the question itself."))  # fmt: skip
            ep.phase = "chain" if placeholders(ep.question) else "read"
        elif ep.phase == "chain":
            self._chain_step(ep)
        elif ep.phase == "read":
            for name in self._frontier(ep)[: self.max_graph]:
                ep.graphed.add(fold(name))
                ep.queue.append(("graph", {"name": base_name(name)},
                                 f"Following the relations of {name}."))  # fmt: skip
            ep.phase = "graph"
        elif ep.phase == "graph":
            bridge = self._best_candidate(ep)
            if bridge is not None:
                ep.bridges.append(bridge)
            if bridge is None or ep.hop + 1 >= ep.hops:
                ep.queue.append(("answer", {"text": self._answer(ep)}, "Answering."))
                ep.phase = "done"
                return
            ep.hop += 1
            ep.queue.append(("visit", {"id": bridge}, f"Reading the page of {bridge}."))
            ep.queue.append(("search", {"query": self._sub_query(ep, bridge), "k": self.k},
                             f"Searching about {bridge}."))  # fmt: skip
            ep.phase = "read"
        else:  # an answer was already given; a solver that goes on gets the same answer
            ep.queue.append(("answer", {"text": self._answer(ep)}, "Answering."))

    # ---- chain mode ----

    def _chain_step(self, ep: _Episode) -> None:
        """One hop of the chain: extend every path by the facts read for its last entity."""
        hops = len(placeholders(ep.question)) + 1
        if not ep.paths and ep.hop == 0:
            starts = chain_start(ep)
            if not starts:
                ep.phase = "read"
                return
            ep.paths = [[{"object": starts[0]}]]
        ends = list(dict.fromkeys(str(path[-1]["object"]) for path in ep.paths))
        missing = [e for e in ends if fold(e) not in ep.facts and fold(e) not in ep.graphed]
        if missing:  # read the graph around this hop's entities first
            for name in missing[: self.max_chain_width]:
                ep.graphed.add(fold(name))
                ep.queue.append(("graph", {"name": name}, f"Following the relations of {name}."))
            return
        extended = [
            [*path, fact]
            for path in ep.paths
            for fact in outgoing(
                ep.facts.get(fold(str(path[-1]["object"])), []),
                str(path[-1]["object"]),
                ep.question,
            )
            if fold(str(fact["object"])) not in {fold(str(f["object"])) for f in path}
        ]
        if not extended:  # the chain broke: fall back to reading
            ep.hop, ep.phase, ep.paths = 0, "read", []
            return
        ep.paths, ep.hop = extended[: self.max_chain_width * 4], ep.hop + 1
        if ep.hop < hops:
            return
        answer = chain_answer(ep.paths)
        path = next(p for p in ep.paths if p[-1]["object"] == answer)
        evidence = list(dict.fromkeys(c for fact in path[1:] for c in fact.get("evidence", [])))
        for chunk_id in evidence[: 2 * hops]:
            ep.queue.append(("visit", {"id": chunk_id}, "Reading the evidence of the chain."))
        ep.bridges.append(answer)
        ep.queue.append(("answer", {"text": base_name(answer)}, "Answering."))
        ep.phase = "done"

    def _frontier(self, ep: _Episode) -> list[str]:
        """Hop 0: the question's entities, the last named first; later: the bridge."""
        names = [ep.bridges[-1]] if ep.hop > 0 else question_entities(ep)
        return [n for n in names if fold(n) not in ep.graphed]

    def _sub_query(self, ep: _Episode, bridge: str) -> str:
        """The question without the names it already resolved, plus the bridge's name."""
        text = ep.question
        for name in question_entities(ep):
            text = re.sub(re.escape(base_name(name)), " ", text, flags=re.IGNORECASE)
        return f"{' '.join(text.split())} {base_name(bridge)}"

    def _candidates(self, ep: _Episode) -> dict[str, float]:
        names = [n for n, h in ep.neighbours.items() if h == ep.hop]
        names += [title for title, _, h in ep.read.values() if h == ep.hop]
        used = {fold(base_name(b)) for b in ep.bridges}
        scores: dict[str, float] = {}
        for name in dict.fromkeys(names):
            if mentions(name, ep.question) or fold(base_name(name)) in used:
                continue
            now = sum(mentions(name, text) for _, text, h in ep.read.values() if h == ep.hop)
            ever = sum(mentions(name, text) for _, text, _ in ep.read.values())
            bonus = 0.5 if ep.neighbours.get(name) == ep.hop else 0.0
            scores[name] = now + ever + bonus
        return scores

    def _best_candidate(self, ep: _Episode) -> str | None:
        scores = self._candidates(ep)
        best = max(scores.values(), default=0.0)
        return next((n for n, s in scores.items() if s == best), None) if best > 0 else None

    def _answer(self, ep: _Episode) -> str:
        q = ep.question.lower()
        texts = [text for _, text, h in ep.read.values() if h == ep.hop]
        texts += [text for _, text, h in ep.read.values() if h != ep.hop]
        if q.startswith(("when", "what year", "in what year", "what date")):
            for text in texts:
                if match := _DATE.search(text):
                    return match.group()
        if "how many" in q or "how much" in q:
            for text in texts:
                for match in _NUMBER.finditer(text):
                    if fold(match.group()) not in fold(ep.question):
                        return match.group()
        return base_name(ep.bridges[-1]) if ep.bridges else "unknown"


def named_titles(ep: _Episode) -> list[str]:
    """The titles of search hits that the question names, in hit order."""
    return [t for t in dict.fromkeys(t for _, t, _ in ep.hits if t) if mentions(t, ep.question)]


def question_entities(ep: _Episode) -> list[str]:
    """Hit titles the question names and its capitalized phrases, the last named first (a
    multi-hop question usually starts its chain at its innermost, last-named entity)."""
    titles = named_titles(ep)
    spans = [re.sub(r"'s?$", "", m.group()) for m in _CAPITALIZED.finditer(ep.question)]
    spans = [
        s for s in spans if ep.question.find(s) > 0 and not any(mentions(s, t) for t in titles)
    ]
    names = list(dict.fromkeys([*titles, *spans]))
    folded = fold(ep.question)
    names.sort(key=lambda n: -folded.find(fold(base_name(n))))
    if not names:
        names = [t for _, t, _ in ep.hits[:1] if t]
    return names


_PLACEHOLDER = re.compile(r"\b[XYZWV]\b")
_QUESTION_WORDS = frozenset({"which", "what", "who", "whom", "whose", "where", "when", "how"})


def chain_start(ep: _Episode) -> list[str]:
    """The entity a chain question names: a search hit's title it mentions, else its first
    capitalized phrase that is neither a placeholder nor a question word."""
    titles = named_titles(ep)
    if titles:
        return [min(titles, key=lambda t: fold(ep.question).find(fold(base_name(t))))]
    spans = [m.group() for m in _CAPITALIZED.finditer(ep.question)]
    spans = [s for s in spans if ep.question.find(s) > 0 and not _PLACEHOLDER.fullmatch(s)
             and s.lower() not in _QUESTION_WORDS]  # fmt: skip
    return spans[:1]


def placeholders(question: str) -> list[str]:
    """The placeholder letters standing for unnamed intermediate entities, in order."""
    return list(dict.fromkeys(_PLACEHOLDER.findall(question)))


def _stems(predicate: str) -> list[str]:
    words = [w for w in re.split(r"[^a-z]+", predicate.lower()) if len(w) >= 4]
    return [w[: max(4, len(w) - 2)] for w in words]


def outgoing(facts: Sequence[dict[str, Any]], entity: str, question: str) -> list[dict[str, Any]]:
    """The entity's facts as subject whose predicate the question uses (all when none does)."""
    own = [f for f in facts if fold(str(f.get("subject"))) == fold(entity) and f.get("object")]
    folded = fold(question)
    named = [f for f in own if any(stem in folded for stem in _stems(str(f["predicate"])))]
    return named or own


def chain_answer(paths: Sequence[Sequence[dict[str, Any]]]) -> str:
    """The end most paths reach (ties: the first found)."""
    ends = [str(path[-1]["object"]) for path in paths]
    return max(dict.fromkeys(ends), key=ends.count)


def _since_last_assistant(messages: Sequence[Message]) -> list[Message]:
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") == "assistant":
            return list(messages[i + 1 :])
    return []
