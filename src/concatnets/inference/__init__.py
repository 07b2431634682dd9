"""concatnets.inference."""
