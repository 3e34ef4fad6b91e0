"""Tests of fr_dist.data."""
