"""Helpers the tests and benchmarks share: synthetic models in the real layouts, file writers."""
