"""The run directory and the stage calls the pipelines share.

Every stage writes into its own directory under the run directory and is reused only when its full
identity matches: its own settings (from the config) plus the content hash of every input artifact, with
the output's own files verified against the hashes in its marker (``manifest.json`` for data, scores and
selections, ``done.json`` for training, ``eval.json`` for evaluation). Otherwise the stage is recomputed
and its stale directory replaced; the log says which stages were reused and why (see
:mod:`tokenclean.outputs`). Interrupted stages resume on their own (scoring and training are resumable;
prepare and select are atomic). Every stage runs on ``model.device``; scoring in ``scoring.dtype``,
training in ``train.model_dtype`` (+ ``train.bf16``), evaluation in ``eval.dtype``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenclean.config import to_dict
from tokenclean.data.split import split_indices
from tokenclean.outputs import (
    StaleOutputError,
    check_target,
    content_id,
    decide,
    file_digests,
    guarded,
    identity_diff,
    load_dataset_dir,
    output_lock,
    verify_input,
)
from tokenclean.pipelines.config import RunConfig
from tokenclean.runtime import rank_zero_first, rank_zero_only
from tokenclean.summary import write_summary
from tokenclean.utils import (
    atomic_dir,
    get_logger,
    read_json,
    sha256_json,
    sha256_tree,
    write_json_atomic,
)

log = get_logger("pipeline")


@dataclass
class Run:
    """A run directory plus its config and the summary being built."""

    cfg: RunConfig
    root: Path
    summary: dict[str, Any] = field(default_factory=dict)
    _tokenizer: Any = None
    _pool: Path | None = None  # the prepared pool, once prepare_pool has checked it in this process
    match_steps: int | None = None  # budget.match_updates: optimizer updates of the self-evolving adapter

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from tokenclean.models.loader import load_tokenizer

            self._tokenizer = load_tokenizer(self.cfg.model.base)
        return self._tokenizer

    def rel(self, p: Path | str | None) -> str | None:
        return None if p is None else str(Path(p).resolve().relative_to(self.root.resolve()))

    def method(self, name: str) -> dict[str, Any]:
        methods = self.summary.setdefault("methods", {})
        return methods.setdefault(
            name,
            {
                "adapter": None,
                "cleaned": None,
                "scores": None,
                "round": None,
                "eval": None,
                "recovery": None,
                "heldout": None,
            },
        )

    @rank_zero_only
    def save_summary(self) -> None:
        """Write ``summary.json`` through its schema (:mod:`tokenclean.summary`)."""
        write_summary(self.root, self.summary)


@rank_zero_only
def report_stage(root: Path, summary: dict[str, Any], tokenizer: Any = None) -> None:
    """Build the run's report (``root/report``) and record its files in ``summary.json`` (rank 0; skipped
    with a warning when the report extra, matplotlib, is missing)."""
    try:
        from tokenclean.report import build_report
    except ImportError:
        log.warning("report skipped: install tokenclean[report]")
        return
    paths = build_report([str(root)], tokenizer=tokenizer)
    summary["report"] = {k: str(v) for k, v in paths.items()}
    write_summary(root, summary)
    log.debug("report: %s", paths.get("index.html") or paths.get("report.md"))  # the CLI prints it


@rank_zero_first
def open_run(cfg: RunConfig) -> Run:
    import yaml

    from tokenclean.models.loader import resolve_device, set_attn_implementation

    resolve_device(cfg.model.device)  # `device: cuda` without CUDA fails here, before any stage runs
    set_attn_implementation(cfg.model.attn_implementation)  # every stage's load_model in this process
    root = Path(cfg.run_dir)
    root.mkdir(parents=True, exist_ok=True)
    resolved = to_dict(cfg)
    old = root / "config.yaml"
    if old.exists():
        try:
            prev = yaml.safe_load(old.read_text())
        except yaml.YAMLError:
            prev = None
        if not isinstance(prev, dict):  # damaged (the directory is a run's: check_run_dir said so)
            log.warning("%s is not a config mapping; it is rewritten from this run's config", old)
            prev = {}
        changed = sorted(k for k in resolved if prev.get(k) != resolved[k])
        if changed:
            log.warning(
                "config changed since this run directory was created (%s); finished stages are reused "
                "only where their own inputs are unchanged",
                ", ".join(changed),
            )
    tmp = root / ".config.yaml.tmp"
    tmp.write_text(yaml.safe_dump(resolved, sort_keys=False))
    tmp.replace(old)
    summary_path = root / "summary.json"
    summary = read_json(summary_path) if summary_path.exists() else {}
    summary.update(
        pipeline=",".join(cfg.methods), name=cfg.name, model=cfg.model.base, ratio=cfg.selection.ratio
    )
    return Run(cfg, root, summary)


# ------------------------------------------------------------------------------------------------ data


@rank_zero_first
def prepare_file(run: Run, source: str | Path, out: Path) -> Path:
    from tokenclean.data.prepare import prepare

    d = run.cfg.data
    prepare(
        source,
        run.tokenizer,
        out,
        fmt=d.format,
        template=d.template,
        max_length=d.max_length,
        skip_invalid=d.skip_invalid,
        tokenizer_name=run.cfg.model.base,
        replace_stale=True,
        workers=d.workers,
    )
    return out


def artifact_id(path: Path, marker: str = "manifest.json") -> str:
    """The content identity of a finished input artifact, after verifying its files (refused if damaged)."""
    m = verify_input(path, marker, hint=f"delete {path} and re-run; it is recomputed")
    return content_id(m["files"]) if m.get("files") else sha256_tree(path)


@rank_zero_first
@guarded("prepare", inputs=("prepared",))
def subset(prepared: Path, indices: list[int], out: Path, note: str) -> Path:
    """Write rows ``indices`` of a prepared dataset as a prepared dataset of its own (atomic; reused only
    for the same parent content and rows)."""
    identity = {"parent": artifact_id(prepared), "rows": sha256_json(indices), "note": note}
    if decide(out, "prepare", identity, replace_stale=True) is not None:
        return out
    ds = load_dataset_dir(prepared, f"delete {prepared} and re-run")
    parent = read_json(prepared / "manifest.json")
    sub = ds.select(indices)
    manifest = dict(
        parent,
        parent=str(prepared.resolve()),
        parent_cache_key=parent.get("cache_key"),
        cache_key=sha256_json(identity),  # its own: scores of a subset never pass for the parent's
        identity=identity,
        subset=note,
        n_rows=len(indices),
        tokens={"total": int(sum(sub["length"])), "trained": int(sum(sub["n_trained"]))},
    )
    with atomic_dir(out) as tmp:
        sub.save_to_disk(str(tmp))
        manifest["files"] = file_digests(tmp)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
    return out


# ------------------------------------------------------------------------------------------------ stages


def train_stage(
    run: Run,
    data: Path,
    out: Path,
    init_adapter: Path | None = None,
    epochs: int | None = None,
    cfg: Any = None,
    max_steps: int | None = None,
) -> Path:
    """LoRA-train the base on ``data`` (prepared or cleaned); returns the adapter directory. ``cfg``
    replaces ``run.cfg.train`` (e.g. with another token policy); ``max_steps`` (equal-update comparisons)
    trains that many optimizer updates, cycling over the data."""
    import dataclasses

    from tokenclean.training import train

    cfg = cfg or run.cfg.train
    cfg = cfg if epochs is None else dataclasses.replace(cfg, epochs=epochs)
    if max_steps is not None:
        cfg = dataclasses.replace(cfg, max_steps=max_steps)
    init = str(init_adapter) if init_adapter else None
    kwargs: dict[str, Any] = {"cfg": cfg, "init_adapter": init, "device": run.cfg.model.device}
    try:
        train(str(data), run.cfg.model.base, str(out), **kwargs)
    except StaleOutputError as e:  # finished or checkpointed by other settings or inputs: recompute
        log.info("recomputing %s: %s", out, e)
        discard_training(out)
        train(str(data), run.cfg.model.base, str(out), **kwargs)
    return out / "adapter"


def discard_training(out: Path) -> None:
    """Remove a stale training stage of the run directory (done.json first: it stops reading as finished)."""
    import shutil

    (out / "done.json").unlink(missing_ok=True)
    for name in ("checkpoint", "adapter"):
        shutil.rmtree(out / name, ignore_errors=True)
    (out / "log.jsonl").unlink(missing_ok=True)


def score_stage(
    run: Run, data: Path, out: Path, adapter: Path | None = None, reference: str | None = None
) -> Path:
    """Score ``data``: base vs the reference (an adapter on the base, scored from one loaded model with the
    adapter off/on, or an external model). Resumes an interrupted store; returns at once for a complete one."""
    from tokenclean.scoring import score_dataset

    score_dataset(
        str(data),
        run.cfg.model.base,
        reference=reference,
        adapter=str(adapter) if adapter else None,
        out=str(out),
        dtype=run.cfg.scoring.dtype,
        device=run.cfg.model.device,
        batch_tokens=run.cfg.scoring.batch_tokens,
        packing=run.cfg.scoring.packing,
        replace_stale=True,
    )
    return out


@rank_zero_first
def rebase_scores(new_vs_base: Path, prev_vs_base: Path, out: Path) -> Path:
    """Scores of the new reference against the *previous* model instead of the base:
    ``loss_prev - loss_new`` = ``(base - new) - (base - prev)``, from two stores scored against the base."""
    identity = {"new_vs_base": artifact_id(new_vs_base), "prev_vs_base": artifact_id(prev_vs_base)}
    check_target(out, "score", [new_vs_base, prev_vs_base])
    with output_lock(out):
        if decide(out, "score", identity, replace_stale=True) is None:
            _write_rebased(new_vs_base, prev_vs_base, out, identity)
    return out


def _write_rebased(new_vs_base: Path, prev_vs_base: Path, out: Path, identity: dict[str, Any]) -> None:
    import datasets
    import numpy as np

    from tokenclean.scoring.store import score_features

    hint = "delete it and re-run"
    a, b = load_dataset_dir(new_vs_base, hint), load_dataset_dir(prev_vs_base, hint)
    if a["sample_id"] != b["sample_id"]:
        raise ValueError(f"{new_vs_base} and {prev_vs_base} hold different samples")
    prev = [np.asarray(x, dtype=np.float32) for x in b["ref_loss"]]
    new = [np.asarray(x, dtype=np.float32) for x in a["ref_loss"]]
    cols = {
        "sample_id": a["sample_id"],
        "base_loss": prev,
        "ref_loss": new,
        "score": [p - n for p, n in zip(prev, new)],
    }
    manifest = dict(
        read_json(new_vs_base / "manifest.json"),
        base={"name": "previous round", "store": str(prev_vs_base)},
        identity=identity,
        run_key=sha256_json(identity),  # never taken for the store it was derived from
    )
    with atomic_dir(out) as tmp:
        datasets.Dataset.from_dict(cols, features=score_features()).save_to_disk(str(tmp))
        manifest["files"] = file_digests(tmp)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")


@rank_zero_first
def select_stage(run: Run, scores: Path, out: Path, level: str, ratio: float | None = None) -> Path:
    from tokenclean.selection import select

    sel = run.cfg.selection
    steps = sel.steps if level != "random" else None  # step scores rank; random ignores scores
    select(
        str(scores),
        ratio if ratio is not None else sel.ratio,
        level,
        str(out),
        seed=sel.seed,
        replace_stale=True,
        steps=steps,
        step_separator=sel.step_separator,
        tokenizer=run.tokenizer if steps else None,
    )
    return out


def matched_train_dir(run: Run, method_dir: Path) -> tuple[Path, int | None]:
    """``(out, max_steps)`` of a single-stage method's training: ``method_dir/train``, or with
    ``budget.match_updates`` ``method_dir/train_steps_N`` for N = the self-evolving adapter's updates (so a
    matched and an unmatched training never share a directory)."""
    n = run.match_steps
    if n is None:
        return method_dir / "train", None
    return method_dir / f"train_steps_{n}", n


def eval_identity(run: Run, adapter: Path | None, heldout: Path | None) -> dict[str, Any]:
    """What an evaluation result depends on: the weights, the adapter, the held-out data, the suite and
    the device and dtype it ran in."""
    from tokenclean.models.loader import adapter_hash, resolve_device, resolve_model, weights_hash

    e = run.cfg.eval
    return {
        "model": weights_hash(resolve_model(run.cfg.model.base)),
        "adapter": adapter_hash(str(adapter)) if adapter else None,
        "heldout": artifact_id(heldout) if heldout else None,
        "suite": e.suite,
        "tasks": list(e.tasks),
        "limit": e.limit,
        "data_dir": e.data_dir,
        "device": resolve_device(run.cfg.model.device).split(":")[0],
        "dtype": e.dtype,
    }


def eval_stage(run: Run, name: str, adapter: Path | None, out: Path) -> dict[str, Any] | None:
    """Evaluate base (+ adapter) with the configured suite on ``model.device`` in ``eval.dtype``; reused
    from ``out`` only when its identity (:func:`eval_identity`) matches. Under a launched group every rank
    evaluates its share (:mod:`tokenclean.evaluation.parallel`; rank 0 decides reuse and writes ``out``)."""
    e = run.cfg.eval
    if e.suite == "none":
        return None
    from tokenclean.evaluation import evaluate
    from tokenclean.evaluation.parallel import eval_group

    heldout = run.root / "data" / "heldout"
    identity = eval_identity(run, adapter, heldout if heldout.exists() else None)
    group, _ = eval_group(run.cfg.model.device)
    reused = group.broadcast(_reusable_eval(out, identity) if group.is_main else None)
    if reused is not None:
        return dict(reused)
    res = evaluate(
        run.cfg.model.base,
        adapter=str(adapter) if adapter else None,
        suite=e.suite,
        tasks=list(e.tasks) or None,
        heldout=str(heldout) if heldout.exists() else None,
        data_dir=e.data_dir,
        limit=e.limit,
        out=None,
        device=run.cfg.model.device,
        dtype=e.dtype,
        progress=group.is_main,
    )
    if group.is_main:
        write_json_atomic(out, dict(res, stage_identity=identity))
        log.info("eval %s: %s", name, _eval_line(res))
    return res


def _reusable_eval(out: Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    """The result in ``out`` when it was computed with ``identity``, else None (logged either way)."""
    if not out.exists():
        return None
    old = read_json(out)
    if old.get("stage_identity") == identity:
        log.info("reusing %s (same model, adapter, data, suite, device and dtype)", out)
        return {k: v for k, v in old.items() if k != "stage_identity"}
    diff = identity_diff(old.get("stage_identity"), identity)
    log.info("recomputing %s: changed since it was computed: %s", out, ", ".join(diff))
    return None


def _eval_line(res: dict[str, Any]) -> str:
    """``average 41.20 (mmlu 0.4100, ...)`` or ``heldout_loss 1.2345, ...``: what an evaluation measured."""
    tasks = ", ".join(
        f"{k} {v['value']:.4f}" for k, v in (res.get("tasks") or {}).items() if v.get("value") is not None
    )
    avg = res.get("average")
    return (f"average {avg:.4f} ({tasks})" if avg is not None else tasks) or "no task measured"


# ------------------------------------------------------------------------------------------------ shared


def prepare_pool(run: Run) -> Path:
    """The prepared pool (and held-out set), generated first when the config asks for a synthetic pool."""
    if run._pool is not None:
        return run._pool
    out = run.root / "data" / "pool"
    d = run.cfg.data
    source, heldout = d.path, d.heldout
    if d.synthetic is not None:
        from tokenclean.groundtruth.generator import generate_pool

        gen = run.root / "data" / "source"
        _generate_once(generate_pool, d.synthetic, gen)
        source, heldout = str(gen / "pool.jsonl"), str(gen / "test.jsonl")
    if heldout:  # first: a held-out file with bad records stops the run before the (larger) pool is prepared
        prepare_file(run, heldout, run.root / "data" / "heldout")
    prepare_file(run, source, out)
    run._pool = out
    return out


@rank_zero_first
def _generate_once(generate_pool: Any, settings: Any, gen: Path) -> None:
    """Generate the pool unless ``gen`` holds one of these settings (facts.json, written last, records them)."""
    if _generated_config(gen) != to_dict(settings):
        if (gen / "facts.json").exists():
            log.info("recomputing %s: data.synthetic changed", gen)
        generate_pool(settings, gen)


def _generated_config(gen: Path) -> Any:
    if not ((gen / "facts.json").exists() and (gen / "pool.jsonl").exists()):
        return None
    return json.loads(json.dumps(read_json(gen / "facts.json").get("config"), default=str))


def pool_splits(run: Run) -> list[Path]:
    """The T+1 seeded, equal splits of the pool (split 0 trains the warm-up reference)."""
    import datasets

    pool = prepare_pool(run)
    parts = run.cfg.self_evolving.rounds + 1
    n = len(datasets.load_from_disk(str(pool)))
    idx = split_indices(n, parts, split_seed(run))
    return [
        subset(pool, ix, run.root / "data" / f"split_{i}", f"split {i} of {parts}")
        for i, ix in enumerate(idx)
    ]


def split_seed(run: Run) -> int:
    """The seed of the pool splits (fixed across ``seeds``)."""
    s = run.cfg.selection
    return s.seed if s.split_seed is None else s.split_seed


def warmup_data(run: Run) -> Path:
    """What the warm-up reference trains on: split 0 of the pool, or ``warmup.data`` (a curated set)."""
    w = run.cfg.warmup.data
    if w is None:
        return pool_splits(run)[0]
    prepare_pool(run)
    source = run.root / "data" / "source" / "clean.jsonl" if w == "synthetic:clean" else Path(w)
    return prepare_file(run, source, run.root / "data" / "warmup")


def warmup_adapter(run: Run) -> Path:
    """Base + LoRA trained on split 0 (or ``warmup.data``) with all tokens: the fixed-model reference,
    reference_1 of self-evolving cleaning and the DS2 baseline."""
    return train_stage(run, warmup_data(run), run.root / "warmup", epochs=run.cfg.warmup.epochs)
