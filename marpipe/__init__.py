"""marpipe: the reproduction pipeline for MAR-GRPO."""
__version__ = "0.1.0"
