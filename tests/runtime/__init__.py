"""Tests of fr_dist.runtime."""
