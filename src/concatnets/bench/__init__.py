"""concatnets.bench."""
