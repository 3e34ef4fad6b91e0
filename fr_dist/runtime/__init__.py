"""The runtime: process groups and links, the ring buffer, the action vocabulary and the
engine that executes it, the iteration loop, checkpoints and metrics. It knows no algorithm."""
