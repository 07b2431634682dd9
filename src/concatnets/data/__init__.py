"""concatnets.data."""
