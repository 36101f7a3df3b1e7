"""`corral agent`: the device supervisor that runs WebAssembly functions with wasmtime.

The command (`agent.command`, also `corral agent`) builds `agent.settings.AgentSettings` and
serves `agent.server.create_agent_app(settings)`; it imports nothing of the server or the CLI,
and nothing is imported here, so the CLI starts fast.
"""
