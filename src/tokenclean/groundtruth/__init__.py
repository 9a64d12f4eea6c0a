"""A ground-truth benchmark for token selection: SFT pools whose every response token is known to be
informative (a fact the model can learn), uninformative (boilerplate the model already predicts) or noise
(gibberish or a wrong fact), with a clean held-out test set.
"""

from tokenclean.groundtruth.generator import PoolConfig, generate_pool
from tokenclean.groundtruth.metrics import heldout_metrics, recovery_metrics
from tokenclean.groundtruth.truth import INFORMATIVE, NOISE, UNINFORMATIVE, token_truth

__all__ = [
    "INFORMATIVE",
    "NOISE",
    "UNINFORMATIVE",
    "PoolConfig",
    "generate_pool",
    "heldout_metrics",
    "recovery_metrics",
    "token_truth",
]
