"""Persistence: SQLAlchemy tables, migrations and one repository per resource.

SQLite by default, PostgreSQL by URL; only the services (`control`, `fleet`) import it and
`core` builds it (a contract in pyproject.toml checks this).
"""
