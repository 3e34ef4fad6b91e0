"""Tests that need a CUDA device: marked gpu, skipped cleanly without one."""
