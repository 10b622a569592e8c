"""Curation: user SQL under a read-only role, frozen dataset snapshots, export, contamination audit.

- `query`: `run_query` runs one read-only statement as `kap_curator` (timeout, row cap).
- `access`: the read-only role's password and engine.
- `conversations`: a trajectory as a training conversation (messages, tools, domain, ids).
- `datasets`: create (freeze), list, show, export a dataset snapshot.
- `audit`: n-gram overlap between a dataset and evaluation questions and answers.
"""
