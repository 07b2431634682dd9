"""concatnets.engine."""
