"""kap.ui."""
