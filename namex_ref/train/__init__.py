"""namex_ref.train (see its modules)."""
