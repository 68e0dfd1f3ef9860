"""The test suite (a package, so that `tui` and `runtime` resolve to this tree, never to another checkout)."""
