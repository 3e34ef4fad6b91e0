"""Tools around training: sweeps (launch), benchmark, simulator, plots, export and evaluation."""
