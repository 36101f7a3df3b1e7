"""corral: one control plane for robot and edge fleets.

Docker hosts, stacks, sessions, Wasm devices, print-farm tasks and robot fleets behind one API.
"""

__version__ = "0.1.0"
DEFAULT_PORT = 8750  # the API's port; here so the CLI needs no settings module
