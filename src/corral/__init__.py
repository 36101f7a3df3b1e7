"""corral: one control plane for robot and edge fleets.

Docker hosts, stacks, sessions, Wasm devices, print-farm tasks and robot fleets behind one API.
"""

__version__ = "0.1.0"
