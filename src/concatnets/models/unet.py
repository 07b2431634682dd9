"""U-Net family (placeholder)."""
