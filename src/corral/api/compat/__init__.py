"""The seed systems' APIs, as thin routers over corral's core.

Each keeps its users' clients working unchanged; none holds logic of its own.
"""
