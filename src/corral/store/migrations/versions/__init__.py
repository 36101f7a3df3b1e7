"""Alembic revisions, oldest first by their down_revision chain.

Each file changes the schema once.
"""
