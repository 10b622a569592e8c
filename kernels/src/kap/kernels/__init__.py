"""kap.kernels."""
