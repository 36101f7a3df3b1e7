"""Alembic migrations for corral's tables, applied at every start.

One revision per schema change under versions/.
"""
