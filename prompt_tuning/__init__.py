"""Prompt tuning of frozen T5 models read from T5X checkpoints."""

__version__ = "0.1.0"
