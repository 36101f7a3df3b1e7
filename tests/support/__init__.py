"""Shared helpers for corral's tests: real Docker engines and real corral servers.

Nothing here mocks Docker; see engines.py and server.py.
"""
