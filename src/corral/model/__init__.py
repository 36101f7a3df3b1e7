"""Pure domain model: frozen specs, validation and parsing, no I/O.

Imported by every other layer; imports nothing of corral's outside this package.
"""
