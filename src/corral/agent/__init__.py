"""`corral agent`: the device supervisor that runs WebAssembly functions with wasmtime.

The CLI (`corral.cli.agent`) builds `agent.settings.AgentSettings` and serves
`agent.server.create_agent_app(settings)`; nothing is imported here, so the CLI starts fast.
"""
