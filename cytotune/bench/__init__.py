"""Benchmarks that measure the product as a whole (one module each)."""
