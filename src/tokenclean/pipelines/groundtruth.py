"""For runs with known token truth (a generated ground-truth pool, or ``data.truth`` annotations of the
user's data): how well each method's kept tokens recover the truth, how each trained model does on the
clean held-out set (generated pools), and what each result cost; means with 95% intervals
(:mod:`tokenclean.stats`: bootstrap over pool samples or held-out questions, and over seeds)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tokenclean import IGNORE_INDEX, methods
from tokenclean.groundtruth.metrics import heldout_per_sample, label_breakdown, recovery_metrics
from tokenclean.groundtruth.truth import classes, is_noise_label, pool_truth
from tokenclean.groundtruth.user_truth import TokenTruth
from tokenclean.methods import MethodSpec
from tokenclean.pipelines.budget import method_budget
from tokenclean.pipelines.stages import Run, get_logger
from tokenclean.stats import Interval, bootstrap, clustered, weighted_mean

log = get_logger("groundtruth")


@dataclass(frozen=True)
class Truth:
    """Token truth of the pool plus how its labels fold into classes."""

    tt: TokenTruth
    positive: tuple[str, ...]
    noise: tuple[str, ...]


def _keep_by_id(cleaned: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """Keep masks of a cleaned set by sample id, and its per-position weights when it is a soft selection
    (a ``weights`` column), from one read."""
    import datasets

    ds = datasets.load_from_disk(str(cleaned))
    keep = {sid: np.asarray(lab) != IGNORE_INDEX for sid, lab in zip(ds["sample_id"], ds["labels"])}
    if "weights" not in ds.column_names:
        return keep, None
    return keep, {sid: np.asarray(w, dtype=np.float64) for sid, w in zip(ds["sample_id"], ds["weights"])}


def _scores_by_id(scores_dir: Path) -> dict[str, np.ndarray]:
    import datasets

    ds = datasets.load_from_disk(str(scores_dir))
    return {r["sample_id"]: np.asarray(r["score"], dtype=np.float64) for r in ds}


def _sources(
    root: Path, spec: MethodSpec, m: dict[str, Any], rounds: list[dict[str, Any]]
) -> tuple[list, list]:
    """(cleaned dirs, score dirs) behind a method's kept tokens, as its spec's ``recovery`` says
    (``rounds``: every cleaned split; a soft selection keeps every scored token, with a weight)."""
    if spec.recovery == "rounds":
        return [root / r["cleaned"] for r in rounds], [root / r["scores"] for r in rounds]
    if spec.recovery != "cleaned" or not m.get("cleaned"):
        return [], []
    return [root / m["cleaned"]], ([root / m["scores"]] if spec.scored and m.get("scores") else [])


def _counted_keep(
    train_dir: Path, data_dir: Path, truth: Truth
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Online methods: the tokens their policy counted in the last epoch, as keep masks by sample id, and
    their effective weights (1 for a hard policy; DFT's sg(p))."""
    from tokenclean.training.counted import counted_tokens

    counted = counted_tokens(train_dir, data_dir)
    keep, weight = {}, {}
    for sid, pos in counted.items():
        if sid in truth.tt.samples:
            n = len(truth.tt.samples[sid].labels)
            k, w = np.zeros(n, dtype=bool), np.zeros(n, dtype=np.float64)
            at = np.fromiter(pos, dtype=np.int64)
            k[at] = True
            w[at] = np.fromiter(pos.values(), dtype=np.float64)
            keep[sid], weight[sid] = k, w
    return keep, weight


def _evidence(truth: Truth, root: Path, name: str, m: dict[str, Any], rounds: list) -> dict[str, Any] | None:
    """Per-sample truth, keep and score arrays of one method in one run (ids sorted)."""
    spec = methods.get(name)
    cleaned, scores = _sources(root, spec, m, rounds)
    keep: dict[str, np.ndarray] = {}
    weight: dict[str, np.ndarray] | None = None
    if m.get("counted"):  # online policies: recovery on the tokens they counted
        keep, weight = _counted_keep(root / m["counted"], root / m["cleaned"], truth)
        scores = []
    elif not cleaned:
        return None
    for c in cleaned if not m.get("counted") else []:
        k, w = _keep_by_id(c)
        keep.update(k)
        if w is not None:
            weight = {**(weight or {}), **w}
    pol = (m.get("policy") or {}).get("name")
    if not (pol and methods.policy_class(pol).soft):
        weight = None  # hard methods: the share kept says it all
    score: dict[str, np.ndarray] = {}
    for s in scores:
        score.update(_scores_by_id(s))
    ids = sorted(i for i in (score if scores else keep) if i in truth.tt.samples)
    n = {i: len(truth.tt.samples[i].labels) for i in ids}
    return {
        "ids": ids,
        "cls": classes(truth.tt, ids, truth.positive, truth.noise),
        "labels": [truth.tt.samples[i].labels for i in ids],
        "decisive": [truth.tt.samples[i].decisive for i in ids],
        "keep": [keep.get(i, np.zeros(n[i], dtype=bool)) for i in ids],  # emptied samples keep nothing
        "scores": [score[i] for i in ids] if scores else None,
        "weights": [weight.get(i, np.zeros(n[i])) for i in ids] if weight is not None else None,
    }


def _recovery_stat(truth: Truth, ev: list[dict[str, Any]]) -> Any:
    """``f(seed, sample units)``: recovery metrics and the per-label breakdown, flattened."""

    def f(s: int, units: np.ndarray) -> dict[str, float | None]:
        e = ev[s]
        pick = [int(u) for u in units]
        sc = [e["scores"][u] for u in pick] if e["scores"] is not None else None
        kp = [e["keep"][u] for u in pick]
        wt = [e["weights"][u] for u in pick] if e.get("weights") is not None else None
        out: dict[str, float | None] = dict(recovery_metrics([e["cls"][u] for u in pick], kp, sc))
        br = label_breakdown(
            [e["labels"][u] for u in pick],
            [e["decisive"][u] for u in pick],
            kp,
            truth.tt.names,
            sc,
            truth.positive,
            is_noise_label(truth.noise),
            wt,
        )
        for label, row in br.items():
            out.update({f"{label}|{k}": v for k, v in row.items()})
        return out

    return f


def recovery_intervals(
    truth: Truth, ev: list[dict[str, Any]], facts: dict[str, Any] | None = None
) -> dict[str, Interval]:
    """Intervals over pool samples (and seeds); with ``facts`` ({sample id: fact}) over facts (clusters)."""
    ids = ev[0]["ids"]
    if any(e["ids"] != ids for e in ev):
        raise ValueError("seeds scored different samples; intervals need the same samples in every seed")
    if facts:
        g, k = clustered(_recovery_stat(truth, ev), np.asarray([facts[i] for i in ids]))
        return bootstrap(g, len(ev), k)
    return bootstrap(_recovery_stat(truth, ev), len(ev), len(ids))


def _facts(path: Path) -> dict[str, Any]:
    """{row id: fact} of a generated pool file (empty when the file is absent)."""
    import json

    if not path.is_file():
        return {}
    with open(path) as f:
        return {str(r["id"]): r.get("fact") for r in map(json.loads, f)}


def heldout_questions(model: Any, ds: Any, truth: list[np.ndarray]) -> dict[str, list[float]]:
    """Per held-out question: its metrics (batched by length through ``heldout_per_sample``) and the token
    counts that make their means token-weighted, so the mean over questions equals the pooled one."""
    p = heldout_per_sample(model, ds["input_ids"], ds["labels"], truth)
    tok, ans = p["tokens"], p["answer_tokens"]
    return {
        "loss": (p["loss_sum"] / np.maximum(tok, 1)).tolist(),
        "tokens": tok.tolist(),
        "answer_loss": np.where(ans > 0, p["answer_loss_sum"] / np.maximum(ans, 1), 0.0).tolist(),
        "answer_tokens": ans.tolist(),
        "exact": np.where(ans > 0, p["exact"], False).astype(np.float64).tolist(),
    }


def heldout_intervals(
    per_seed: list[dict[str, list[float]]], clusters: np.ndarray | None = None
) -> dict[str, Interval]:
    """Intervals of the held-out metrics; ``clusters`` (per question, e.g. its fact) resamples clusters."""
    arr = [{k: np.asarray(v, dtype=np.float64) for k, v in q.items()} for q in per_seed]

    def f(s: int, u: np.ndarray) -> dict[str, float | None]:
        q = arr[s]
        has_answer = (q["answer_tokens"] > 0).astype(np.float64)
        return {
            "loss": weighted_mean(q["loss"], q["tokens"], u),
            "answer_loss": weighted_mean(q["answer_loss"], q["answer_tokens"], u),
            "exact_match": weighted_mean(q["exact"], has_answer, u),
        }

    n = {len(q["loss"]) for q in arr}
    if len(n) != 1:
        raise ValueError("seeds were evaluated on different held-out sets")
    if clusters is not None and len(clusters) == next(iter(n)):
        g, k = clustered(f, clusters)
        return bootstrap(g, len(arr), k)
    return bootstrap(f, len(arr), n.pop())


def _question_facts(run: Run) -> np.ndarray | None:
    """The fact of every held-out question in prepared order (None when the data names no fact)."""
    import datasets

    facts = _facts(run.root / "data" / "source" / "test.jsonl")
    heldout = run.root / "data" / "heldout"
    if not facts or not heldout.is_dir():
        return None
    return np.asarray([facts[i] for i in datasets.load_from_disk(str(heldout))["sample_id"]])


def interval_units(run: Run) -> str:
    """What the intervals resample: ``facts`` (generated pools: clusters of questions and samples) or
    ``samples`` (one unit per held-out question / pool sample)."""
    return "facts" if (run.root / "data" / "source" / "pool.jsonl").is_file() else "samples"


def load_truth(run: Run) -> Truth:
    pool = run.root / "data" / "pool"
    d = run.cfg.data
    if d.synthetic is not None:
        tt = pool_truth(run.root / "data" / "source" / "pool.jsonl", pool, run.tokenizer)
        return Truth(tt, ("informative",), ("noise",))
    from tokenclean.groundtruth.user_truth import load_user_truth

    assert d.truth is not None
    tt = load_user_truth(d.truth, d.path, pool, run.tokenizer, d.format)
    return Truth(tt, tuple(d.truth_positive), tuple(d.truth_noise))


def measure_run(run: Run) -> None:
    """Held-out metrics per question and the budget of every method of one run (cached in its summary)."""
    import datasets

    from tokenclean.groundtruth.truth import token_truth
    from tokenclean.models.loader import load_model

    heldout = run.root / "data" / "heldout"
    synthetic = run.cfg.data.synthetic is not None
    test_ds = datasets.load_from_disk(str(heldout)) if synthetic else None
    test_truth = (
        token_truth(run.root / "data" / "source" / "test.jsonl", heldout, run.tokenizer) if synthetic else []
    )
    rounds = run.summary.get("rounds", [])
    for name, m in run.summary.get("methods", {}).items():
        m["budget"] = method_budget(run.root, name, m, rounds)
        if synthetic and (m.get("heldout_questions") is None or m.get("heldout_adapter") != m.get("adapter")):
            model = load_model(
                run.cfg.model.base,
                device=run.cfg.model.device,
                adapter=str(run.root / m["adapter"]) if m.get("adapter") else None,
            )
            m["heldout_questions"] = heldout_questions(model, test_ds, test_truth)
            m["heldout_adapter"] = m.get("adapter")  # the cache is valid for this adapter only
            del model
        run.save_summary()


def aggregate(runs: list[Run], truth: Truth) -> dict[str, dict[str, Any]]:
    """Means and 95% intervals over the runs (one per seed) of every method they share."""
    names = [
        n for n in runs[0].summary.get("methods", {}) if all(n in r.summary.get("methods", {}) for r in runs)
    ]
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        ms = [r.summary["methods"][name] for r in runs]
        agg: dict[str, Any] = {"seeds": len(runs)}
        ev = [_evidence(truth, r.root, name, m, r.summary.get("rounds", [])) for r, m in zip(runs, ms)]
        if all(e is not None for e in ev):
            facts = _facts(runs[0].root / "data" / "source" / "pool.jsonl")
            iv = recovery_intervals(truth, ev, facts or None)  # type: ignore[arg-type]
            flat = {k: v for k, v in iv.items() if "|" not in k}
            agg["recovery"] = {k: v.mean for k, v in flat.items()}
            agg["recovery_ci"] = {k: v.as_list() for k, v in flat.items()}
            agg["classes"], agg["classes_ci"] = {}, {}
            for k, v in iv.items():
                if "|" in k:
                    label, key = k.split("|", 1)
                    agg["classes"].setdefault(label, {})[key] = v.mean
                    agg["classes_ci"].setdefault(label, {})[key] = v.as_list()
        if all(m.get("heldout_questions") for m in ms):
            hv = heldout_intervals([m["heldout_questions"] for m in ms], _question_facts(runs[0]))
            agg["heldout"] = {k: v.mean for k, v in hv.items()}
            agg["heldout_ci"] = {k: v.as_list() for k, v in hv.items()}
            agg["heldout"]["questions"] = len(ms[0]["heldout_questions"]["loss"])
        budgets = [m.get("budget") for m in ms]
        if all(budgets):
            agg["budget"] = {k: _num(np.mean([b[k] for b in budgets])) for k in budgets[0]}  # type: ignore[index]
        out[name] = agg
    return out


def _num(x: float) -> float | int:
    """A mean over seeds, as an int when it is whole (budgets of identical seeds)."""
    return int(x) if float(x).is_integer() else float(x)


def evaluate_ground_truth(run: Run) -> None:
    """Truth-based metrics of one run (intervals over samples and questions; one seed)."""
    truth = load_truth(run)
    measure_run(run)
    for name, agg in aggregate([run], truth).items():
        m = run.summary["methods"][name]
        m.update({k: v for k, v in agg.items() if k != "seeds"})
        log.info("%s: recovery: %s; held-out: %s", name, _brief(m.get("recovery")), _brief(m.get("heldout")))
    run.summary["seeds_used"] = [run.cfg.train.seed]
    run.summary["interval_units"] = interval_units(run)
    run.save_summary()


def _brief(metrics: dict[str, Any] | None) -> str:
    """``k=v`` pairs with 4 significant digits, for one readable log line per method."""
    if not metrics:
        return "-"
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())


def _seed_dirs(root: Path, top: dict[str, Any]) -> list[Path]:
    """The run directories behind a finished run: its seeds' (``per_seed``, found under ``root`` when the
    recorded path was relative to another working directory) or the run itself."""
    per_seed = top.get("per_seed") or {}
    if not per_seed:
        return [root]
    dirs = []
    for s, recorded in per_seed.items():
        d = Path(recorded)
        dirs.append(d if (d / "summary.json").exists() else root / f"seed_{s}")
    return dirs


def finished_runs(root: Path) -> tuple[dict[str, Any], list[Run]]:
    """(recorded summary, one :class:`Run` per seed) of a finished run directory; a missing summary or
    seed is a DataError naming the file."""
    from tokenclean.errors import DataError
    from tokenclean.pipelines.config import load_run_config
    from tokenclean.utils import read_json

    path = root / "summary.json"
    if not path.exists():
        raise DataError(str(path), "no summary: not a finished tokenclean run directory")
    top = read_json(path)
    runs = []
    for sd in _seed_dirs(root, top):
        for need in ("config.yaml", "summary.json"):
            if not (sd / need).exists():
                raise DataError(str(sd / need), "missing: the run did not finish this seed")
        runs.append(Run(load_run_config(sd / "config.yaml"), sd, read_json(sd / "summary.json")))
    return top, runs


def recompute_run(root: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(recorded summary, recomputed methods) of a finished run with truth: the recovery of every method
    computed again from the run's files (cleaned sets, score stores, counted tokens, the truth file), over
    the same seeds and with the same bootstrap, to check that the run's table follows from its outputs."""
    from tokenclean.errors import DataError

    top, runs = finished_runs(root)
    d = runs[0].cfg.data
    if d.synthetic is None and d.truth is None:
        raise DataError(str(root / "config.yaml"), "the run has no token truth", field="data.truth")
    for p in (d.path, d.truth):
        if p is not None and d.synthetic is None and not Path(p).exists():
            raise DataError(
                str(root / "config.yaml"),
                f"{p} does not exist from this directory; run from where the run was started",
                field="data",
            )
    return top, aggregate(runs, load_truth(runs[0]))


def recovery_differences(recorded: dict[str, Any], recomputed: dict[str, Any]) -> list[str]:
    """Where the recomputed recovery (means, intervals, per-label shares) differs from the recorded one
    (beyond 1e-9), as ``method: key recorded -> recomputed`` lines; empty when the table reproduces."""
    out = []
    for name, new in recomputed.items():
        old = (recorded.get("methods") or {}).get(name) or {}
        for key in ("recovery", "recovery_ci", "classes", "classes_ci"):
            a, b = _flat(old.get(key)), _flat(new.get(key))
            for k in sorted(set(a) | set(b)):
                x, y = a.get(k), b.get(k)
                if not _same(x, y):
                    out.append(f"{name}: {key}.{k} {x} -> {y}")
    return out


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    """A nested dict/list flattened to ``a.b.0`` keys (None: empty)."""
    if isinstance(node, dict):
        return {k2: v for k, x in node.items() for k2, v in _flat(x, f"{prefix}{k}.").items()}
    if isinstance(node, list):
        return {k2: v for i, x in enumerate(node) for k2, v in _flat(x, f"{prefix}{i}.").items()}
    return {} if node is None and not prefix else {prefix.rstrip("."): node}


def _same(x: Any, y: Any) -> bool:
    """Equal, or numbers within 1e-9, or both missing (None or NaN: JSON writes NaN as null)."""

    def missing(v: Any) -> bool:
        return v is None or (isinstance(v, float) and v != v)

    if missing(x) and missing(y):
        return True
    if isinstance(x, (int, float)) and isinstance(y, (int, float)):
        return abs(x - y) <= 1e-9
    return bool(x == y)
