"""Tests of fr_dist.algos."""
