"""Tests of fr_dist.models: a user's own model."""
