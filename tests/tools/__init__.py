"""Tests of fr_dist.tools: sweeps, plots, benchmark, simulator."""
