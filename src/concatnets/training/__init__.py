"""concatnets.training."""
