"""Every Cypher statement of ingestion and graph statistics, always with $parameters.

Writes are `UNWIND $rows ... MERGE` on content-hash ids, so every statement is idempotent:
a batch that is retried, or a run killed half-way and started again, converges to the graph
a clean run gives. Evidence lists grow by set union, never by plain append.
"""

from __future__ import annotations

EXISTING_ENTITIES = """
MATCH (e:Entity {domain: $domain})
RETURN e.id AS id, e.name AS name, coalesce(e.aliases, []) AS aliases
"""

MERGE_ENTITIES = """
UNWIND $rows AS row
MERGE (e:Entity {id: row.id})
ON CREATE SET e.domain = row.domain, e.name = row.name, e.norm = row.norm, e.type = row.type,
              e.aliases = []
SET e.aliases = e.aliases + [a IN row.aliases WHERE NOT a IN e.aliases]
"""

MERGE_DOCUMENTS = """
UNWIND $rows AS row
MERGE (d:Document {id: row.id})
SET d.domain = row.domain, d.title = row.title, d.source = row.source, d.sha256 = row.sha256
WITH d, row
MATCH (e:Entity {id: row.entity_id})
MERGE (d)-[:ABOUT]->(e)
"""

MERGE_CHUNKS = """
UNWIND $rows AS row
MATCH (d:Document {id: row.document_id})
MERGE (c:Chunk {id: row.id})
SET c.domain = row.domain, c.text = row.text, c.ord = row.ord, c.n_tokens = row.n_tokens,
    c.start = row.start, c.end = row.end, c.document_id = row.document_id
MERGE (c)-[:PART_OF]->(d)
"""

MERGE_NEXT = """
UNWIND $rows AS row
MATCH (a:Chunk {id: row.prev}), (b:Chunk {id: row.next})
MERGE (a)-[:NEXT]->(b)
"""

MERGE_MENTIONS = """
UNWIND $rows AS row
MATCH (c:Chunk {id: row.chunk_id}), (e:Entity {id: row.entity_id})
MERGE (c)-[:MENTIONS]->(e)
"""

MERGE_RELATIONS = """
UNWIND $rows AS row
MATCH (s:Entity {id: row.subject}), (o:Entity {id: row.object})
MERGE (s)-[r:REL {id: row.id}]->(o)
ON CREATE SET r.predicate = row.predicate, r.domain = row.domain, r.evidence = []
SET r.evidence = r.evidence + [x IN row.evidence WHERE NOT x IN r.evidence]
"""

MERGE_TOOLS = """
UNWIND $rows AS row
MERGE (t:Tool {id: row.id})
SET t.domain = row.domain, t.name = row.name, t.description = row.description,
    t.schema = row.schema, t.input_types = row.input_types, t.output_type = row.output_type
"""

MERGE_FEEDS = """
UNWIND $rows AS row
MATCH (a:Tool {id: row.source}), (b:Tool {id: row.target})
MERGE (a)-[f:FEEDS]->(b)
SET f.type = row.type
"""

# ---- deletion: the document, its chunks, and relations whose only evidence it was ----

DOCUMENT_CHUNK_IDS = """
MATCH (d:Document {id: $id}) WHERE d.domain = $domain
OPTIONAL MATCH (c:Chunk)-[:PART_OF]->(d)
RETURN d.id AS id, collect(c.id) AS chunk_ids  // grouped by d: no row without the document
"""

PRUNE_EVIDENCE = """
MATCH ()-[r:REL]->()
WHERE r.domain = $domain AND any(x IN r.evidence WHERE x IN $chunk_ids)
SET r.evidence = [x IN r.evidence WHERE NOT x IN $chunk_ids]
WITH r WHERE size(r.evidence) = 0
DELETE r
RETURN count(*) AS deleted
"""

DELETE_DOCUMENT = """
MATCH (d:Document {id: $id})
OPTIONAL MATCH (c:Chunk)-[:PART_OF]->(d)
DETACH DELETE c, d
"""

# ---- statistics ----

REL_COUNTS = """
MATCH (a)-[r]->()
WHERE $domain IS NULL OR a.domain = $domain
RETURN type(r) AS type, count(r) AS n
"""

DOMAINS = "MATCH (d:Document) RETURN DISTINCT d.domain AS domain ORDER BY domain"
