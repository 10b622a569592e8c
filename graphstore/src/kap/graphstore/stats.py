"""Graph statistics: node counts per label and relationship counts per type, by domain."""

from __future__ import annotations

from typing import Any

import neo4j

from kap.graphstore import queries as Q
from kap.graphstore.schema import NODE_LABELS


def graph_stats(
    driver: neo4j.Driver, *, domain: str | None = None, database: str = "neo4j"
) -> dict[str, Any]:
    nodes = {}
    for label in NODE_LABELS:  # labels come from the allowlist, never from input
        query = (
            f"MATCH (n:{label}) WHERE $domain IS NULL OR n.domain = $domain RETURN count(n) AS n"
        )
        nodes[label] = driver.execute_query(query, domain=domain, database_=database).records[0][
            "n"
        ]
    rels = {
        r["type"]: r["n"]
        for r in driver.execute_query(Q.REL_COUNTS, domain=domain, database_=database).records
    }
    domains = [r["domain"] for r in driver.execute_query(Q.DOMAINS, database_=database).records]
    return {"domain": domain, "domains": domains, "nodes": nodes, "relationships": rels}
