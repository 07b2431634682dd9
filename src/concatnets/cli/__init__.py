"""concatnets.cli."""
