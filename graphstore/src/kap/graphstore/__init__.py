"""kap.graphstore."""
