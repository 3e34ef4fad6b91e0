"""Tests of fr_dist.partition: cuts and the profiler."""
