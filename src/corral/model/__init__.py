"""Pure domain model: frozen specs, validation and parsing, no I/O.

Imported by every other layer; imports nothing of corral's outside this package but
`corral.errors`, the layer below it (its parsers raise `Invalid` and `Conflict`).
"""
