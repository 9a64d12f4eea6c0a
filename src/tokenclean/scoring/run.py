"""``score_dataset``: prepared dataset + base (+ reference) -> score store (see :mod:`.store`).

Order of work: resolve the models and the run key; return at once if ``out`` already holds this run;
load the models (one model when the reference is an adapter on the base); check the engine against the
full forward on one sample; score this process's missing parts, every base part first and then every
reference part (so a LoRA reference can be merged in place once, see :mod:`.models`), in length-bucketed
batches; when every part is done, assemble the dataset and write the manifest.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tokenclean import IGNORE_INDEX
from tokenclean.alignment import scatter_to_positions
from tokenclean.columns import StringColumn, flat_list, list_lengths, offsets_of
from tokenclean.config import DEFAULT_DEVICE
from tokenclean.errors import ConfigError, DataError, ModelError
from tokenclean.outputs import content_id, guarded, load_dataset_dir, verify_input
from tokenclean.scoring import store
from tokenclean.scoring.checks import warn_if_reference_is_base
from tokenclean.scoring.engine import (
    PADDED,
    Packing,
    Sample,
    SampleLosses,
    batch_token_losses,
    default_batch_tokens,
    naive_token_losses,
)
from tokenclean.scoring.models import (
    ModelPair,
    load_pair,
    pair_identities,
    resolve_packing,
    resolve_pair,
)
from tokenclean.scoring.scorers import get_scorer
from tokenclean.utils import RESULT, get_logger, package_versions, read_json, sha256_json

log = get_logger("scoring")

DEFAULT_SHARD_SIZE = 256  # samples per chunk file
SELF_CHECK_TOL = {"fp32": 1e-3}  # max |engine - full forward| allowed, nats; other dtypes: 0.25


class PreparedData:
    """Column access to a prepared dataset without Python lists of every token (Arrow -> numpy)."""

    def __init__(self, prepared_dir: str | Path) -> None:

        self.dir = Path(prepared_dir).resolve()
        if not (self.dir / "manifest.json").exists():
            raise DataError(
                str(self.dir), "not a prepared dataset (no manifest.json); run tokenclean prepare"
            )
        self.manifest = verify_input(self.dir, hint="re-run tokenclean prepare with --force")
        self.content = content_id(self.manifest["files"]) if self.manifest.get("files") else None
        self.ds = load_dataset_dir(self.dir, "re-run tokenclean prepare with --force").with_format("arrow")
        table = self.ds[:]  # memory-mapped, zero-copy
        self.sample_ids = StringColumn(table["sample_id"])  # read on demand (no list of every id)
        self.lengths = list_lengths(table["input_ids"])  # (n,) int64, chunk by chunk

    def __len__(self) -> int:
        return len(self.sample_ids)

    def samples(self, rows: np.ndarray) -> list[Sample]:
        """The samples at prepared ``rows`` (any order), in that order."""
        tbl = self.ds[[int(r) for r in rows]]
        iv, ilen = flat_list(tbl["input_ids"], np.int32)  # chunk by chunk: no 2**31 limit
        lv, llen = flat_list(tbl["labels"], np.int32)
        off, loff = offsets_of(ilen), offsets_of(llen)
        return [
            Sample(int(row), iv[off[r] : off[r + 1]], lv[loff[r] : loff[r + 1]]) for r, row in enumerate(rows)
        ]

    def chunk(self, k: int, shard_size: int) -> np.ndarray:
        """Prepared rows of chunk ``k``: the ``k``-th run of ``shard_size`` in the global length order."""
        return store.chunk_rows(self.lengths, shard_size, k)


def scoring_plan(models: dict[str, Any], **settings: Any) -> dict[str, Any]:
    """What a run computes, plus ``run_key``, its hash: equal keys give bit-identical stores."""
    plan = dict(models, **settings)
    return dict(plan, run_key=sha256_json(plan))


def score_part(
    pair: ModelPair,
    data: PreparedData,
    k: int,
    phase: str,
    shard_size: int,
    batch_tokens: int,
    bar: Any,
    packing: Packing = PADDED,
) -> tuple[store.Part, dict[str, Any]]:
    """One model's losses on chunk ``k`` (``shard_size`` samples of similar length, see
    :func:`store.chunk_rows`) in padded or packed batches of at most ``batch_tokens`` computed tokens."""
    rows = data.chunk(k, shard_size)
    samples = data.samples(rows)
    pad_id = pair.tokenizer.pad_token_id if pair.tokenizer.pad_token_id is not None else 0
    fn = pair.base_losses if phase == "base" else pair.ref_losses
    t0, c0 = time.perf_counter(), time.process_time()
    results: dict[int, SampleLosses] = {}
    lengths = [len(s.input_ids) for s in samples]
    computed = 0
    for idx in packing.batches(lengths, batch_tokens):
        batch = [samples[i] for i in idx]
        losses = fn(batch, pad_id, packing)
        assert losses is not None
        results.update((r.index, r) for r in losses)
        computed += packing.computed_tokens([lengths[i] for i in idx])
        bar.update(sum(lengths[i] for i in idx))
    values = np.concatenate(  # (sum T,) NaN where not scored
        [
            scatter_to_positions(len(s.input_ids), results[s.index].positions, results[s.index].losses)
            for s in samples
        ]
    )
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)  # (n + 1,)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    info = {
        "n": len(samples),
        "tokens": int(offsets[-1]),
        "computed_tokens": int(computed),
        "seconds": round(seconds, 4),
        "cpu_seconds": round(cpu, 4),
    }
    return store.Part(k, phase, rows, offsets, values), info


def self_check(pair: ModelPair, sample: Sample, dtype: str) -> float:
    """Max |engine - full forward| over one sample (cut to ~128 tokens) for each model; raises on a mismatch
    (an architecture whose head the engine does not reproduce)."""
    trained = np.flatnonzero(np.asarray(sample.labels) != IGNORE_INDEX)
    end = max(128, int(trained[0]) + 32) if len(trained) else 128  # short, but with trained tokens in it
    s = Sample(sample.index, sample.input_ids[:end], sample.labels[:end])
    pad = pair.tokenizer.pad_token_id or 0
    worst = 0.0
    models: list[tuple[str, Any, bool]] = [("base", pair.model, pair.mode == "one_model")]
    if pair.mode != "base_only":
        models.append(("reference", pair.ref_model or pair.model, False))
    for what, model, disable in models:
        if disable:
            with model.disable_adapter():
                fast, slow = batch_token_losses(model, [s], pad), naive_token_losses(model, [s], pad)
        else:
            fast, slow = batch_token_losses(model, [s], pad), naive_token_losses(model, [s], pad)
        diff = float(np.max(np.abs(fast[0].losses - slow[0].losses), initial=0.0))
        if diff > SELF_CHECK_TOL.get(dtype, 0.25):
            raise ModelError(
                f"self-check failed for the {what} model ({type(model).__name__}): chunked head differs from "
                f"the full forward by {diff:.3g} nats; this architecture post-processes logits in a way the "
                "engine does not know"
            )
        worst = max(worst, diff)
    return worst


def _validate(scorer: str, reference: str | None, adapter: str | None, shard_size: int) -> None:
    sc = get_scorer(scorer)
    if sc.needs_reference and not (reference or adapter):
        raise ConfigError(f"scorer: '{scorer}' needs a reference model or adapter (--reference)")
    if shard_size < 1:
        raise ConfigError(f"shard_size: must be >= 1, got {shard_size}")


def _shard_lock(a: dict[str, Any]) -> str:
    return f"shard-{a['shard_index']}" if a["num_shards"] > 1 else ""


@guarded("score", inputs=("prepared_dir", "reference", "adapter", "base"), in_place=True, tag=_shard_lock)
def score_dataset(
    prepared_dir: str | Path,
    base: str,
    reference: str | None = None,
    adapter: str | None = None,
    out: str | Path = "runs/scores",
    scorer: str = "token_cleaning",
    dtype: str = "fp32",
    device: str = DEFAULT_DEVICE,
    batch_tokens: int | None = None,
    packing: str = "auto",
    progress: bool = True,
    shard_index: int = 0,
    num_shards: int = 1,
    shard_size: int = DEFAULT_SHARD_SIZE,
    force: bool = False,
    on_part: Callable[[int, str], None] | None = None,
    replace_stale: bool = False,
    parts_only: bool = False,
) -> dict[str, Any]:
    """Score every trained token of a prepared dataset with ``base`` and the reference; write the store.

    ``reference`` is a model (Hub id, dir, .gguf, alias) or a PEFT adapter dir; an adapter whose base is
    ``base`` (or ``adapter=``) is scored from ONE loaded model with the adapter toggled. Resumable: a re-run
    with the same arguments continues a killed run. With ``num_shards > 1`` each process scores chunks
    ``k % num_shards == shard_index``; the last to finish assembles. Returns the manifest (``complete`` is
    False when other shards are still missing). ``on_part(k, phase)`` is called after each part (chunk k, "base" or "ref") is saved.
    ``packing`` (auto, on, off): padding-free batches, see :func:`tokenclean.scoring.models.resolve_packing`;
    the manifest records the layout and ``padding_efficiency`` (real tokens / computed tokens).
    ``parts_only`` (a data engine's score task, :mod:`tokenclean.engines`): score this shard's parts and
    return the manifest entries the store would get (``complete`` False), writing no data file or index."""
    from tokenclean.models.loader import resolve_device

    t0 = time.time()
    _validate(scorer, reference, adapter, shard_size)
    launched, shard_index, num_shards, device = _launch(num_shards, shard_index, device)
    data = PreparedData(prepared_dir)
    out = Path(out).resolve()
    device = resolve_device(device)
    batch_tokens = batch_tokens or default_batch_tokens(device)
    mode, base_spec, ref_spec = resolve_pair(base, reference, adapter)
    settings = store_settings(data, shard_size, scorer, dtype, device)
    base_id, ref_id = pair_identities(mode, base_spec, ref_spec)
    plan = scoring_plan({"base": base_id, "reference": ref_id, "mode": mode}, **settings)
    done = store.complete_manifest(out, plan) if not force else None
    if done is not None:
        log.info("reusing %s (same data, models, dtype and scorer)", out)
        return dict(done, reused=True)
    pair = load_pair(base, reference, adapter, dtype, device, data.manifest.get("tokenizer"))
    layout = resolve_packing(pair, packing, batch_tokens)
    base_id, ref_id = pair.identities()  # a Hub model downloaded just now has a commit hash only from here
    plan = scoring_plan({"base": base_id, "reference": ref_id, "mode": mode}, **settings)
    progress = _prepare_out(launched, out, plan, force, replace_stale) and progress
    total = store.n_chunks(len(data), shard_size)
    mine = store.my_chunks(len(data), shard_size, shard_index, num_shards)
    phases = store.PHASES if pair.mode != "base_only" else ("base",)
    pending = [(k, ph) for ph in phases for k in mine if not store.part_done(out, k, ph)]
    check = _run_parts(pair, data, out, pending, dtype, shard_size, batch_tokens, progress, on_part, layout)
    if parts_only:
        manifest = store_manifest(plan, data, device, batch_tokens, num_shards, check, pair.merge_reference)
        return dict(manifest, **layout_entries(pair, layout), complete=False)
    if launched is not None:
        return _assemble_on_rank0(
            launched, out, plan, data, device, batch_tokens, num_shards, check, pair, t0, layout
        )
    finished = store.complete_manifest(out, plan)  # another shard's process may have assembled already
    if finished is not None:
        return dict(finished, reused=True)
    missing = sorted({k for k in range(total) for ph in phases if not store.part_done(out, k, ph)})
    if missing:
        log.info("shard %d/%d done; %d chunks of other shards missing", shard_index, num_shards, len(missing))
        return dict(plan, stage="score", complete=False, missing_chunks=missing)
    manifest = store_manifest(plan, data, device, batch_tokens, num_shards, check, pair.merge_reference)
    manifest.update(layout_entries(pair, layout))
    manifest = merge_parts(out, data.sample_ids, data.lengths, manifest, total, t0)
    warn_if_reference_is_base(out, pair.mode, adapter or reference)
    return manifest


def _launch(num_shards: int, shard_index: int, device: str) -> tuple[Any, int, int, str]:
    """(launched group or None, shard index, number of shards, device): under accelerate launch / torchrun
    one shard per process, on the process's own GPU."""
    launched = _launched_group(num_shards, device)
    if launched is None:
        return None, shard_index, num_shards, device
    if device in ("cuda", "auto") and str(launched.device).startswith("cuda"):
        device = str(launched.device)
    return launched, launched.process_index, launched.num_processes, device


def _prepare_out(launched: Any, out: Path, plan: dict[str, Any], force: bool, replace_stale: bool) -> bool:
    """Set up the store directory (under a launcher: rank 0 first, then the others check it); returns
    whether this process shows progress."""
    if launched is None:
        store.prepare_out(out, plan, force, replace_stale)
        return True
    with launched.main_process_first():
        main = launched.is_main_process
        store.prepare_out(out, plan, force and main, replace_stale and main)
    return bool(main)


def _launched_group(num_shards: int, device: str) -> Any:
    """The accelerate ``PartialState`` when this process was started by a launcher with several processes
    (and no explicit ``--num-shards``), else None."""
    from tokenclean.runtime import launched_world, process_group

    if launched_world()[1] <= 1 or num_shards != 1:
        return None
    import torch

    return process_group(cpu=device == "cpu" or (device == "auto" and not torch.cuda.is_available()))


def _assemble_on_rank0(
    group: Any,
    out: Path,
    plan: dict[str, Any],
    data: PreparedData,
    device: str,
    batch_tokens: int,
    num_shards: int,
    check: float | None,
    pair: ModelPair,
    t0: float,
    layout: Packing = PADDED,
) -> dict[str, Any]:
    """Every rank has written its parts: each rank writes its own data file (its block of prepared rows, from
    every rank's parts), then rank 0 waits for them and writes the index and manifest; no rank assembles or
    re-hashes the store. The waits are outside any collective (a large store may outlast the group timeout)."""
    from accelerate.utils import gather_object

    from tokenclean.runtime import after_rank_zero

    group.wait_for_everyone()
    gathered = gather_object([check])  # the worst self-check over ranks goes in the manifest
    worst = max((c for c in gathered if c is not None), default=None)
    if store.shard_done(out, group.process_index, num_shards) is None:
        args = (data.sample_ids, data.lengths, store.n_chunks(len(data), plan["shard_size"]), plan["scorer"])
        store.write_shard(out, group.process_index, num_shards, *args, pair.mode != "base_only")
    with after_rank_zero("writing the score store's index") as first:
        if first:
            store.wait_for_shards(out, num_shards)  # every rank's data file (polls their markers)
            manifest = store_manifest(
                plan, data, device, batch_tokens, num_shards, worst, pair.merge_reference
            )
            manifest.update(processes=group.num_processes, **layout_entries(pair, layout))
            total = store.n_chunks(len(data), plan["shard_size"])
            merge_parts(out, data.sample_ids, data.lengths, manifest, total, t0)
            warn_if_reference_is_base(out, pair.mode, pair.ref_spec.adapter if pair.ref_spec else None)
    done = store.complete_manifest(out, plan, verify=False)  # rank 0 wrote it just now: no re-hash
    if done is None:
        raise store.StoreError(f"{out}: rank 0 did not assemble the store")
    return done


def _run_parts(
    pair: ModelPair,
    data: PreparedData,
    out: Path,
    pending: list[tuple[int, str]],
    dtype: str,
    shard_size: int,
    batch_tokens: int,
    progress: bool,
    on_part: Callable[[int, str], None] | None,
    layout: Packing = PADDED,
) -> float | None:
    """Score the pending ``(chunk, phase)`` parts: every base part first, then every reference part (so the
    adapter may be merged in place once, between the phases)."""
    from tqdm.auto import tqdm

    if not pending:
        return None
    first = data.samples(data.chunk(pending[0][0], shard_size))
    check = self_check(pair, min(first, key=lambda s: len(s.input_ids)), dtype)
    tokens = sum(int(data.lengths[data.chunk(k, shard_size)].sum()) for k, _ in pending)
    with tqdm(total=tokens, unit="tok", unit_scale=True, desc="score", disable=not progress) as bar:
        for k, phase in pending:
            bar.set_description(f"score ({phase})")
            part, info = score_part(pair, data, k, phase, shard_size, batch_tokens, bar, layout)
            store.write_part(out, part, info)
            if on_part is not None:
                on_part(k, phase)
    return check


def layout_entries(pair: ModelPair, layout: Packing) -> dict[str, Any]:
    """Manifest entries of the batch layout: packing and the attention implementation that ran."""
    impl = getattr(pair.model.config, "_attn_implementation", None)
    return {
        "packing": {"packed": layout.packed, "row_tokens": layout.row_tokens},
        "attn_implementation": impl,
    }


def store_settings(
    data: PreparedData, shard_size: int, scorer: str, dtype: str, device: str
) -> dict[str, Any]:
    """The settings part of a scoring plan (what, besides the two models, the scores depend on)."""
    return {
        "prepared_cache_key": data.manifest.get("cache_key"),
        "prepared_content": data.content,
        "n_samples": len(data),
        "shard_size": shard_size,
        "chunk_order": "length",  # chunk k = the k-th run of shard_size samples, longest first
        "scorer": scorer,
        "dtype": dtype,
        "device_type": device.split(":")[0],
    }


def store_manifest(
    plan: dict[str, Any],
    data: PreparedData,
    device: str,
    batch_tokens: int,
    num_shards: int,
    check: float | None,
    merged: bool,
) -> dict[str, Any]:
    """The manifest of a store before assembly (:func:`merge_parts` adds counts, timings and versions)."""
    return dict(
        plan,
        stage="score",
        prepared_dir=str(data.dir),
        prepared=data.manifest,
        device=device,
        batch_tokens=batch_tokens,
        num_shards=num_shards,
        self_check_max_diff=check,
        reference_merged_in_place=merged,
    )


def merge_parts(
    out: Path,
    sample_ids: Sequence[str],
    lengths: np.ndarray,
    manifest: dict[str, Any],
    total: int,
    t0: float,
) -> dict[str, Any]:
    """Finish the store from the ``total`` chunks of every phase in ``out/.work`` (rows ``sample_ids`` of
    ``lengths`` positions): write the data files of processes that did not write their own (none when every
    process finished), then the index and ``manifest`` with counts, timings and versions (under the merge
    lock; a store of the same ``run_key`` already there is returned as it is). No data is concatenated."""
    with store.merge_lock(out):
        if (out / "manifest.json").exists():
            old = read_json(out / "manifest.json")
            if old.get("run_key") == manifest["run_key"]:
                return dict(old, reused=True)
        phases = store.PHASES if manifest["mode"] != "base_only" else ("base",)
        markers = store.read_markers(out, total, phases)
        num = int(manifest.get("num_shards") or 1)
        for i in range(num):  # the data files no process wrote (e.g. shard processes without a launcher)
            if store.shard_done(out, i, num) is None:
                store.write_shard(
                    out, i, num, sample_ids, lengths, total, manifest["scorer"], len(phases) == 2
                )
        files, counts = store.write_index(out, num, manifest["run_key"])
        compute_s = sum(m["seconds"] for m in markers)
        cpu_s = sum(m.get("cpu_seconds", 0.0) for m in markers)
        tokens = sum(m["tokens"] for m in markers if m["phase"] == "base")
        computed = sum(m.get("computed_tokens", m["tokens"]) for m in markers)
        real = sum(m["tokens"] for m in markers)
        manifest.update(
            complete=True,
            counts=dict(counts, samples=len(sample_ids), tokens=tokens, chunks=total),
            timings={
                "compute_seconds": round(compute_s, 3),
                "compute_cpu_seconds": round(cpu_s, 3),
                "tokens_per_s": round(tokens / compute_s, 2) if compute_s else None,  # both models per token
                "wall_seconds_last_process": round(time.time() - t0, 3),
            },
            versions=package_versions(),
            padding_efficiency=round(real / computed, 4) if computed else None,
        )
        store.finish(out, manifest, files)
    log.info(
        "scored %d samples (%d positions) -> %s at %s tok/s",
        len(sample_ids),
        counts["scored_positions"],
        out,
        manifest["timings"]["tokens_per_s"],
        extra=RESULT,
    )
    return manifest
