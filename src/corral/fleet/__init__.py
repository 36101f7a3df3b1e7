"""The robot fleet: robots and their channels, commands, maps, missions and traffic."""
