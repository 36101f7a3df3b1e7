"""Wasm devices from corral's side: mDNS discovery and the supervisor-protocol client."""
