"""One router per resource kind, mounted by create_app.

Each module holds its request shapes beside its routes.
"""
