"""Runtime backends behind one interface (one file per runtime)."""
