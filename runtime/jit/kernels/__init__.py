"""IR emitters for the runtime's kernels: weight matrix products, norms, WKV, math functions."""
