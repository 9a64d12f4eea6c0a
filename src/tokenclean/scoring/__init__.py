"""Scoring stage: per-token losses of a base and a reference model, scorers, and the score store.

- :func:`score_dataset` (``tokenclean score``): prepared dataset -> store with ``base_loss``, ``ref_loss``,
  ``score`` per token (NaN where not scored) + ``manifest.json``; resumable, shardable across processes.
- :mod:`.engine`: the loss engine (LM head only at trained positions, chunked, fp32 log-softmax,
  length-bucketed batches) and its naive twin.
- :mod:`.scorers`: pure ``(base_loss, ref_loss, mask) -> score`` functions in a registry.

Heavy dependencies (torch, transformers, datasets) are imported inside functions.
"""

from tokenclean.scoring.run import DEFAULT_SHARD_SIZE, score_dataset
from tokenclean.scoring.scorers import SCORERS, get_scorer, register

__all__ = ["DEFAULT_SHARD_SIZE", "SCORERS", "get_scorer", "register", "score_dataset"]
