"""I/O kept apart from the math: checkpoints, metrics tracking, images."""
