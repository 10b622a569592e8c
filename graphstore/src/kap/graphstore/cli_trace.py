"""`kap trace ITEM`: a dataset item (NAME@V#POS) or trajectory, down to the graph behind it."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text
from rich.tree import Tree

# No markup: predicates, kinds and chunk text hold brackets that must print as they are.
out = Console(soft_wrap=True, markup=False)


def _short(text: Any, limit: int = 120) -> str:
    flat = " ".join(str(text or "").split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def trace(
    ctx: typer.Context,
    item: Annotated[str, typer.Argument(help="NAME@VERSION#POSITION, or a trajectory id.")],
    graph: Annotated[bool, typer.Option(help="Also read the chunks and entities in Neo4j.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Follow a dataset item to its trajectory, steps, the chunks they read and the graph."""
    from kap.graphstore.cli import _driver
    from kap.graphstore.provenance import trace as follow
    from kap.platform.db.session import make_engine

    settings = ctx.obj
    engine = make_engine(settings.resolved_database_url(), pool_size=1)
    driver = _driver(settings) if graph else None
    try:
        found = follow(engine, driver, item, database=settings.neo4j_database)
    finally:
        engine.dispose()
        if driver is not None:
            driver.close()
    if as_json:
        typer.echo(json.dumps(found.as_dict(), default=str, ensure_ascii=False, indent=2))
        return
    task, tr, verdict = found.task, found.trajectory, found.verdict
    root = Tree(Text(item, style="bold"))
    if found.dataset_item:
        d = found.dataset_item
        root.add(f"dataset item {d['name']}@{d['version']} #{d['position']} "
                 f"(item hash {d['item_hash'][:12]})")  # fmt: skip
    node = root.add(f"trajectory {tr['id']} · {tr['status']} · {tr['n_turns']} turns · "
                    f"{tr['n_tokens']} tokens · model {tr['model']}")  # fmt: skip
    node.add(
        f"task {task['task_id']} [{task['domain']}/{task['kind']}]: {_short(task['question'])}"
    )
    node.add(
        f"answer {_short(tr['final_answer'], 60)!r} · gold {_short(task['gold_answer'], 60)!r}"
    )
    if verdict:
        node.add(f"verdict {verdict['verifier']} {verdict['verifier_version']}: "
                 f"correct={verdict['correct']} reward={verdict['reward']:.3f}")  # fmt: skip
    steps = node.add(f"{len(found.steps)} steps")
    for step in found.steps:
        call = f"{step['tool']}({_short(json.dumps(step['args']), 60)})" if step["tool"] else "-"
        line = steps.add(f"t={step['t']} {call}")
        for chunk_id in step["chunk_ids"]:
            line.add(f"read chunk {chunk_id}")
    chunks = root.add(f"{len(found.chunks)} chunks read, {len(found.task_chunks)} gold")
    for chunk in found.chunks:
        c = chunks.add(f"{chunk['id']} in {chunk['document']!r} (coverage {chunk['coverage']}): "
                       f"{_short(chunk['text'])}")  # fmt: skip
        for fact in chunk["facts"][:5]:
            c.add(f"evidence of ({fact['source']})-[{fact['predicate']}]->({fact['target']})")
    entities = root.add(f"{len(found.entities)} entities named by the chunks read")
    for entity in found.entities[:30]:
        entities.add(f"{entity['name']} ({entity['id']})")
    out.print(root)
