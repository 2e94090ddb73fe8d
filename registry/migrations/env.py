"""Alembic environment: always run from `registry.migrate` on a connection it passes in.

The registry applies migrations itself (at start and from `modelyard registry
migrate`) over the same async engine it serves from, so there is no alembic.ini
and no offline mode: `registry.migrate` hands a synchronous connection (from
`AsyncConnection.run_sync`) through `config.attributes["connection"]`.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from registry.tables import Base


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


_connection = context.config.attributes.get("connection")
if not isinstance(_connection, Connection):
    raise RuntimeError(
        "registry migrations run through `modelyard registry migrate` "
        "(registry.migrate.upgrade), not the alembic command line"
    )
run_migrations(_connection)
