"""DenseNet family (placeholder until the engine lands)."""
