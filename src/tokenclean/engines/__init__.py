"""The pool stages (prepare, score, select) as shard tasks of a distributed data engine.

- :mod:`.prepare`, :mod:`.score`, :mod:`.select`: the shard tasks and index steps, engine-agnostic
  (``fn(job, rank)``; each writes its shard atomically and keeps a finished one);
- :mod:`.datatrove_engine`: runs them as datatrove tasks (local, Slurm or Ray executors; per-task
  completion records, so a rerun skips finished tasks);
- :mod:`.pool`: the driver of ``tokenclean pool``.

datatrove is an optional extra (``pip install 'tokenclean[engine]'``); nothing here imports it until a
stage runs. See docs/scoring.md, "On a data engine".
"""
