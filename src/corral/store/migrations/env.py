"""Alembic environment: runs migrations on the connection corral hands over.

Called only through corral.store.database.migrate(); never needs an alembic.ini.
"""

from alembic import context

from corral.store.tables import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
