"""The read-only role `kap_curator`: its password on the local cluster, and engines that use it.

Migration 0006 creates the role without a password (it cannot log in yet). On the local cluster
`kap db upgrade` calls `provision_curator` with the password kept in the state directory
(`secrets/postgres-curator`), which `Settings.resolved_curator_url` reads. On a server of your
own, give the role a password yourself and set `KAP_CURATOR_URL`.
"""

from __future__ import annotations

import psycopg
import sqlalchemy as sa
from psycopg import sql

from kap.platform.db.session import make_engine
from kap.platform.errors import DatabaseError
from kap.platform.services.process import ensure_secret
from kap.platform.settings import CURATOR_ROLE, CURATOR_SECRET, Settings


def provision_curator(admin_url: str, password: str) -> None:
    """Give `kap_curator` a password (as the owner at `admin_url`); the migration made the role."""
    conninfo = (
        sa.make_url(admin_url).set(drivername="postgresql").render_as_string(hide_password=False)
    )
    with psycopg.connect(conninfo, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [CURATOR_ROLE]).fetchone():
            conn.execute(
                sql.SQL("ALTER ROLE {} WITH LOGIN PASSWORD {}").format(
                    sql.Identifier(CURATOR_ROLE), sql.Literal(password)
                )
            )
            return
    raise DatabaseError(f"no role {CURATOR_ROLE}: run `kap db upgrade` (migration 0006 makes it)")


def provision_local_curator(settings: Settings) -> bool:
    """On the local cluster, set the role's password from the state dir; False elsewhere."""
    if not settings.local_postgres:
        return False
    password = ensure_secret(settings.secret_path(CURATOR_SECRET))
    provision_curator(settings.resolved_database_url(), password)
    return True


def curator_engine(settings: Settings) -> sa.Engine:
    """A small pool logged in as the read-only role, for curation queries and the explorer."""
    return make_engine(
        settings.resolved_curator_url(), pool_size=2, max_overflow=4, application_name="kap-curator"
    )
