"""Pipelines: readable top-to-bottom scripts over the stages (prepare -> score -> select -> train -> eval).

``fixed_model`` and ``self_evolving`` implement the paper's two cleaning strategies; ``baselines`` the
paper's baselines (base, warm-up/DS2, full tokens, uniform random, RHO). ``runner.run`` executes the methods a
config asks for in one run directory, sharing the stages they have in common (the prepared pool, the
warm-up reference, the pool's scores), and skipping every stage that already finished.
"""
