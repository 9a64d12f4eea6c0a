"""tokenclean: token-level data cleaning for LLM supervised fine-tuning.

Stages: data -> scoring -> selection -> training -> evaluation -> report.
"""

__version__ = "0.1.0"

IGNORE_INDEX = -100
"""Label value of a position that is not trained (the Hugging Face / PyTorch CrossEntropy convention)."""
