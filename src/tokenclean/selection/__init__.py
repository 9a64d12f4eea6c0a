"""Selection: turning token scores into keep-masks and cleaned training labels.

- :mod:`tokenclean.selection.masks`: pure array functions (global / sample / random / threshold top-k on a
  flat score array with CSR offsets; one global sort for many ratios);
- :mod:`tokenclean.selection.stats`: what a selection did (requested vs achieved ratio, histogram, ...);
- :mod:`tokenclean.selection.table`: a score store joined row by row with its prepared dataset;
- :mod:`tokenclean.selection.selector`: the offline selector base (a subclass gives ``keep(table)``, the base
  writes the cleaned set, ``dropped.jsonl``, stats and manifest once); :mod:`tokenclean.selection.levels`
  the score-based selectors (global, sample, random, threshold, soft weights), :mod:`.xtf` XTF;
- :mod:`tokenclean.selection.cleaned`: the ``select`` stage writing the cleaned dataset; it streams
  (:mod:`.streamed`): the pool read block by block (:mod:`.blocks`), the cut by the streaming selection
  (:mod:`.streaming`), the cleaned set written in the files ``save_to_disk`` wrote (:mod:`.writer`,
  :mod:`.pending`), memory one record batch whatever the pool.

Synthetic stores and prepared data for tests and benchmarks: :mod:`tokenclean.testing.stores`.
"""

from tokenclean.selection.cleaned import select, select_many
from tokenclean.selection.masks import (
    LEVELS,
    TIE_RULE,
    GlobalRanking,
    global_masks,
    global_ranking,
    keep_mask,
    n_keep,
    ratio_count,
    select_global,
    select_random,
    select_sample,
    select_threshold,
)
from tokenclean.selection.selector import Selection, Selector, write_selection
from tokenclean.selection.stats import selection_stats
from tokenclean.selection.table import TokenTable, load_token_table

__all__ = [
    "LEVELS",
    "TIE_RULE",
    "GlobalRanking",
    "Selection",
    "Selector",
    "TokenTable",
    "global_masks",
    "global_ranking",
    "keep_mask",
    "load_token_table",
    "n_keep",
    "ratio_count",
    "select",
    "select_global",
    "select_many",
    "select_random",
    "select_sample",
    "select_threshold",
    "selection_stats",
    "write_selection",
]
