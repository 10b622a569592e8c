"""kap.training."""
