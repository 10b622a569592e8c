"""kap.workers."""
