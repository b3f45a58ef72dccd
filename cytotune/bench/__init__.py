"""The `cytotune bench` benchmarks, one module each; common.py holds what they share."""
