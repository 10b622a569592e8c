"""Stores the integration tests fill the way production does: an indexed MuSiQue slice in a
private Neo4j domain, `kap worker` processes, and the read-only role's URL for a database."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kap.platform.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
KAP = str(Path(sys.executable).parent / "kap")
MUSIQUE = ROOT.parent / "shared" / "data" / "musique" / "corpus.json"


@contextmanager
def musique_domain(settings: Settings, workdir: Path, prefix: str, n: int = 400) -> Iterator[str]:
    """The first `n` MuSiQue paragraphs in a private domain, indexed where the workers look;
    removed from the graph and the disk afterwards."""
    from kap.graphstore.connection import connect
    from kap.graphstore.embed import Embedder
    from kap.graphstore.indexing import build_index, index_dir
    from kap.graphstore.ingest import Ingestor
    from kap.graphstore.loaders import load_file
    from kap.graphstore.schema import ensure_schema

    domain = f"{prefix}-{uuid.uuid4().hex[:8]}"
    path = workdir / "corpus.json"
    path.write_text(json.dumps(json.loads(MUSIQUE.read_text())[:n]))
    with connect(settings) as driver:
        ensure_schema(driver)
        Ingestor(driver, domain).run(load_file(path))
        build_index(driver, domain, Embedder()).save(index_dir(settings.state_dir, domain))
        yield domain
        driver.execute_query("MATCH (n {domain: $d}) DETACH DELETE n", d=domain)
    shutil.rmtree(index_dir(settings.state_dir, domain), ignore_errors=True)


def start_worker(
    env: dict[str, str], log: Path, queues: str, concurrency: int
) -> subprocess.Popen[bytes]:
    """A `kap worker` leading its own process group (so `stop_worker` kills it whole)."""
    with log.open("wb") as out:
        return subprocess.Popen([KAP, "worker", "--queues", queues, "--concurrency",
                                 str(concurrency)], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


def stop_worker(proc: subprocess.Popen[bytes], log_dir: Path) -> None:
    from kap.platform.services.process import terminate

    if proc.poll() is None:
        terminate(proc.pid, timeout=60, log=log_dir)
    proc.wait()


def curator_url(settings: Settings, database_url: str) -> str:
    """The read-only role's URL for `database_url`'s database. The role is the cluster's, so
    its password is the test cluster's one (the one `kap db upgrade` sets there too)."""
    from kap.platform.curation.access import provision_curator
    from kap.platform.services.process import ensure_secret
    from kap.platform.settings import CURATOR_SECRET, curator_url_for

    password = ensure_secret(settings.secret_path(CURATOR_SECRET))
    provision_curator(database_url, password)
    return curator_url_for(database_url, password)
