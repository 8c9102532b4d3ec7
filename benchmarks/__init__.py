"""prefopt against TRL on one CPU-sized model: `make bench` (docs/benchmarks.md)."""
