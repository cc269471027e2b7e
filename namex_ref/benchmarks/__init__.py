"""namex_ref.benchmarks (see its modules)."""
