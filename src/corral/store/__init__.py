"""Persistence: SQLAlchemy tables, migrations and one repository per resource.

SQLite by default, PostgreSQL by URL; only `control` and `api` import it.
"""
