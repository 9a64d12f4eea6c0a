"""Cross-fitted references (``warmup.cross_fit: K``), as a script.

The default fixed-model reference is warmed up on split 0 and then scores the whole pool, split 0
included: it scores the very samples whose wrong facts it memorised. Cross-fitting removes that:

    cut the pool into K seeded folds F_1..F_K
    for k = 1..K:
        warm up a reference on every fold but F_k (all tokens)
        score F_k: base vs that reference
    join the K score stores in pool order -> one store; select globally as usual

Each sample is scored by a reference that never trained on it. Cost: K warm-ups on (K-1)/K of the pool.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenclean.outputs import decide, file_digests, guarded
from tokenclean.pipelines.stages import (
    Run,
    artifact_id,
    prepare_pool,
    score_stage,
    split_indices,
    split_seed,
    subset,
    train_stage,
)
from tokenclean.runtime import rank_zero_first
from tokenclean.utils import atomic_dir, read_json, sha256_json


def cross_fit_scores(run: Run) -> Path:
    """The pool scored fold by fold against references that never saw the fold; returns the joined store."""
    import datasets

    pool = prepare_pool(run)
    k_folds = run.cfg.warmup.cross_fit
    out = run.root / "scores" / f"pool_crossfit_{k_folds}"
    n = len(datasets.load_from_disk(str(pool)))
    folds = split_indices(n, k_folds, split_seed(run))
    stores = []
    for k, fold in enumerate(folds):
        rest = sorted(set(range(n)) - set(fold))
        d = run.root / "crossfit" / f"fold_{k}_of_{k_folds}"
        held = subset(pool, fold, d / "fold", f"cross-fit fold {k} of {k_folds}")
        train_on = subset(pool, rest, d / "rest", f"cross-fit: all but fold {k} of {k_folds}")
        ref = train_stage(run, train_on, d / "warmup", epochs=run.cfg.warmup.epochs)
        stores.append(score_stage(run, held, d / "scores", adapter=ref))
    return join_stores(stores, pool, out, note=f"cross-fitted over {k_folds} folds")


@rank_zero_first
@guarded("score", inputs=("stores", "pool"))
def join_stores(stores: list[Path], pool: Path, out: Path, note: str) -> Path:
    """One score store over ``pool`` (its row order) from stores over disjoint parts of it; reused only for
    the same part stores and pool (content identities)."""
    import datasets

    identity = {"joined_from": [artifact_id(s) for s in stores], "pool": artifact_id(pool), "note": note}
    if decide(out, "score", identity, replace_stale=True) is not None:
        return out
    parts = datasets.concatenate_datasets([datasets.load_from_disk(str(s)) for s in stores])
    row = {sid: i for i, sid in enumerate(parts["sample_id"])}
    order = [row[sid] for sid in datasets.load_from_disk(str(pool))["sample_id"]]
    joined = parts.select(order).flatten_indices()
    first, prepared = read_json(stores[0] / "manifest.json"), read_json(pool / "manifest.json")
    manifest = dict(
        first,
        prepared_dir=str(pool.resolve()),
        prepared=prepared,
        prepared_cache_key=prepared.get("cache_key"),  # the joined store is over the whole pool
        joined_from=[str(s.resolve()) for s in stores],
        reference_note=note,
        identity=identity,
        cache_key=sha256_json(identity),
    )
    with atomic_dir(out) as tmp:
        joined.save_to_disk(str(tmp))
        manifest["files"] = file_digests(tmp)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
    return out
