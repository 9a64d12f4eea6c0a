"""Every pipeline end to end on a tiny model (seconds): artifacts, summary, resume after a kill, and the
ground-truth (demo) logic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tokenclean.pipelines.config import load_run_config
from tokenclean.pipelines.runner import run
from tokenclean.testing import require

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny_cpu.yaml"


def adapter_state(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


def assert_schema(root: Path) -> None:
    """The run's summary.json holds only keys its schema declares, of their types, and the report reads it."""
    from tokenclean.report.runs import load_run
    from tokenclean.summary import SCHEMA_VERSION, check_summary

    written = json.loads((root / "summary.json").read_text())
    assert written["schema_version"] == SCHEMA_VERSION
    check_summary(written, str(root), strict=True)
    assert load_run(root).summary == written


def tiny_cfg(tmp_path: Path, model_dir: Path, *extra: str):
    return load_run_config(TINY, [f"run_dir={tmp_path / 'run'}", f"model.base={model_dir}", *extra])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("pipe")
    summary = run(tiny_cfg(tmp, tiny_model_dir))
    return tmp / "run", summary


def test_every_pipeline_writes_its_artifacts(tiny_run: tuple[Path, dict]) -> None:
    root, summary = tiny_run
    assert json.loads((root / "summary.json").read_text()) == summary
    assert_schema(root)
    assert (root / "config.yaml").exists()
    assert set(summary["methods"]) == {
        "base",
        "warmup",
        "full",
        "random",
        "rho",
        "fixed_model",
        "self_evolving",
    }
    for name, m in summary["methods"].items():
        if name == "base":
            assert m["adapter"] is None
            continue
        assert (root / m["adapter"] / "adapter_config.json").exists(), name
    for name in ("fixed_model", "rho", "random"):
        stats = json.loads((root / summary["methods"][name]["cleaned"] / "selection_stats.json").read_text())
        assert stats["level"] == {"fixed_model": "global", "rho": "sample", "random": "random"}[name]
        assert stats["kept_tokens"] == int(0.6 * stats["total_response_tokens"]) or name == "rho"
    # self-evolving: T=2 rounds, each with scores, cleaned split and adapter; output is the last round's
    rounds = summary["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:
        for key in ("scores", "cleaned", "adapter"):
            assert (root / r[key]).exists()
    assert summary["methods"]["self_evolving"]["adapter"] == rounds[-1]["adapter"]
    # the three splits partition the pool
    import datasets

    ids = [set(datasets.load_from_disk(str(root / "data" / f"split_{i}"))["sample_id"]) for i in range(3)]
    pool = set(datasets.load_from_disk(str(root / "data" / "pool"))["sample_id"])
    assert set().union(*ids) == pool and sum(map(len, ids)) == len(pool)
    # sweep: one cleaned set + adapter per ratio, from the same scores
    assert sorted(e["ratio"] for e in summary["sweep"]) == [0.3, 0.9]


def test_rounds_continue_the_previous_adapter(tiny_run: tuple[Path, dict]) -> None:
    root, summary = tiny_run
    done = json.loads((root / summary["rounds"][1]["adapter"]).parent.joinpath("done.json").read_text())
    assert (
        done.get("init_adapter")
        and Path(done["init_adapter"]).resolve() == (root / summary["rounds"][0]["adapter"]).resolve()
    )


def _markers(root: Path) -> dict[str, int]:
    return {
        str(p.relative_to(root)): p.stat().st_mtime_ns
        for name in ("manifest.json", "done.json")
        for p in root.rglob(name)
        if "report" not in p.parts
    }


def test_rerun_skips_finished_stages(tiny_run: tuple[Path, dict], tiny_model_dir: Path, monkeypatch) -> None:
    root, summary = tiny_run
    import tokenclean.training as training

    real, results = training.train, []

    def spy(*a, **k):
        results.append(real(*a, **k))
        return results[-1]

    before = _markers(root)
    monkeypatch.setattr(training, "train", spy)
    again = run(tiny_cfg(root.parent, tiny_model_dir))
    assert again["methods"].keys() == summary["methods"].keys()
    assert results and all(r.get("reused") for r in results)  # every training stage verified and reused
    assert _markers(root) == before  # no stage was rewritten


def test_killed_pipeline_resumes_to_the_same_adapter(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch
) -> None:
    import tokenclean.training as training

    methods = "methods=[fixed_model,self_evolving]"
    ref = run(tiny_cfg(tmp_path / "a", tiny_model_dir, methods))
    real_train = training.train
    calls = {"n": 0}

    def dies_on_third(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real_train(*a, **k)

    monkeypatch.setattr(training, "train", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_cfg(tmp_path / "b", tiny_model_dir, methods))
    monkeypatch.setattr(training, "train", real_train)
    resumed = run(tiny_cfg(tmp_path / "b", tiny_model_dir, methods))
    for name in ("fixed_model", "self_evolving"):
        a = adapter_state(tmp_path / "a" / "run" / ref["methods"][name]["adapter"])
        b = adapter_state(tmp_path / "b" / "run" / resumed["methods"][name]["adapter"])
        assert a.keys() == b.keys()
        for k in a:
            assert (a[k] == b[k]).all(), (name, k)


@pytest.mark.requires("matplotlib")  # the report
def test_ground_truth_demo_logic(tmp_path: Path, tiny_model_dir: Path) -> None:
    from tokenclean.report.truth_tables import class_table, decisive_table, results_table

    cfg = tiny_cfg(
        tmp_path,
        tiny_model_dir,
        "methods=[base,full,random,rho,fixed_model,self_evolving]",
        "data.synthetic={n_facts: 6, repeats: 3, noise_rate: 0.5, seed: 0}",
        "selection.sweep=[]",
        "report=true",
    )
    summary = run(cfg)
    for name in ("full", "random", "rho", "fixed_model", "self_evolving"):
        rec = summary["methods"][name]["recovery"]
        assert 0 <= rec["precision"] <= 1 and 0 <= rec["recall"] <= 1
        if name == "full":
            assert rec["recall"] == 1.0 and rec["noise_rate_kept"] == rec["noise_rate_all"]
        if name in ("rho", "fixed_model", "self_evolving"):
            assert rec["auroc"] is not None
    for m in summary["methods"].values():
        assert m["heldout"]["loss"] > 0 and 0 <= m["heldout"]["exact_match"] <= 1
    table = results_table(summary)
    assert "fixed_model" in table and "exact match" in table
    for name in ("full", "random", "rho", "fixed_model", "self_evolving"):
        classes = summary["methods"][name]["classes"]
        n = sum(c["tokens"] for c in classes.values())
        assert n == summary["methods"][name]["recovery"]["response_tokens"]  # every response token, once
        kept = sum(c["kept"] * c["tokens"] for c in classes.values())
        assert kept == pytest.approx(summary["methods"][name]["recovery"]["kept_tokens"])
        assert (classes["informative"].get("mean_score") is None) == (name in ("full", "random"))
        lo, hi = summary["methods"][name]["recovery_ci"]["recall"]
        assert lo <= summary["methods"][name]["recovery"]["recall"] <= hi  # an interval around the mean
        assert summary["methods"][name]["budget"]["updates"] > 0
    assert summary["methods"]["full"]["classes"]["noise:gibberish"]["kept"] == 1.0
    budget = {n: summary["methods"][n]["budget"] for n in summary["methods"]}
    assert budget["base"]["forward_tokens"] == 0
    # fixed_model pays for the warm-up and the scoring, self-evolving's updates include its warm-up
    assert budget["fixed_model"]["forward_tokens"] > budget["fixed_model"]["backward_tokens"]
    assert budget["random"]["forward_tokens"] == budget["random"]["backward_tokens"]
    assert budget["self_evolving"]["updates"] > budget["self_evolving"]["updates"] - 1 > 0
    ho = summary["methods"]["full"]
    assert ho["heldout"]["questions"] == 6 and ho["heldout_ci"]["loss"][0] <= ho["heldout"]["loss"]
    assert "spans removed" in decisive_table(summary)
    lines = class_table(summary).splitlines()
    assert lines[0].split() == ["method", "fact", "boilerplate", "wrong", "fact", "gibberish"]
    assert [ln.split()[0] for ln in lines[2:]] == ["full", "random", "rho", "fixed_model", "self_evolving"]
    # the run's report: tables and highlighted tokens of the cleaning methods
    html = (tmp_path / "run" / "report" / "index.html").read_text()
    assert 'class="t kept"' in html and "fixed_model" in html
    assert_schema(tmp_path / "run")  # recovery, classes, intervals, budgets, held-out questions


@pytest.mark.requires("matplotlib")  # the report
def test_run_command_says_where_the_report_is(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    from tokenclean.cli import main

    args = [
        f"run_dir={tmp_path / 'run'}",
        f"model.base={tiny_model_dir}",
        "methods=[base,full]",
        "report=true",
    ]
    assert main(["run", str(TINY), *args]) == 0
    out = capsys.readouterr().out
    page = tmp_path / "run" / "report" / "index.html"
    assert page.exists() and f"report: {page}" in out


PEERS = ["online_rho1", "sstoken", "xtf", "dft", "profit", "soft_token_cleaning"]


def test_peer_methods_run_from_a_config(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Every peer method runs from `tokenclean run` on the tiny model, with its own settings section."""
    require("skimage")
    import datasets

    cfg = tiny_cfg(
        tmp_path,
        tiny_model_dir,
        f"methods=[{','.join(PEERS)}]",
        "peers.profit.prob_threshold=0.002",  # the tiny model's probabilities are ~1/vocab
        "peers.xtf.novelty_min=0.002",
        "peers.sstoken.history=ema",
    )
    summary = run(cfg)
    root = tmp_path / "run"
    assert set(summary["methods"]) == set(PEERS)
    for name in PEERS:
        m = summary["methods"][name]
        done = json.loads((root / m["adapter"] / ".." / "done.json").read_text())
        assert done["steps"] >= 1, name
        assert (root / m["adapter"] / "adapter_config.json").exists(), name
    pol = {n: summary["methods"][n]["policy"]["name"] for n in PEERS}
    assert pol == {
        "online_rho1": "rho1",
        "sstoken": "sstoken",
        "xtf": "labels",
        "dft": "dft",
        "profit": "profit",
        "soft_token_cleaning": "weights",
    }
    soft = datasets.load_from_disk(str(root / summary["methods"]["soft_token_cleaning"]["cleaned"]))
    assert "weights" in soft.column_names
    counted = list((root / summary["methods"]["profit"]["counted"] / "counted").glob("step-*.npz"))
    assert counted  # online methods record what they counted
    assert_schema(root)  # policy, counted


def test_peer_settings_are_strict(tmp_path: Path, tiny_model_dir: Path) -> None:
    from tokenclean.errors import ConfigError

    with pytest.raises(ConfigError, match=r"peers\.sstoken\.gamma: must be in \[0, 1\], got 2\.0"):
        tiny_cfg(tmp_path, tiny_model_dir, "peers.sstoken.gamma=2")
    with pytest.raises(ConfigError, match=r"peers\.dft\.floor: unknown key"):
        tiny_cfg(tmp_path, tiny_model_dir, "peers.dft.floor=0.1")
    with pytest.raises(ConfigError, match=r"methods\[0\]: unknown method 'ssttoken'"):
        tiny_cfg(tmp_path, tiny_model_dir, "methods=[ssttoken]")


@pytest.mark.requires("matplotlib")  # the report
def test_ground_truth_recovery_of_peer_methods(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Peer methods join the ground-truth tables: online methods are measured on the tokens they counted
    (ProFit with a threshold that drops some), offline ones on their cleaned data; the report draws every
    method's per-label bars and shows the tokens online methods counted and soft methods' weights."""
    require("skimage")
    cfg = tiny_cfg(
        tmp_path,
        tiny_model_dir,
        "methods=[full,profit,dft,xtf,soft_token_cleaning]",
        "data.synthetic={n_facts: 4, repeats: 3, noise_rate: 0.5, seed: 0}",
        "selection.sweep=[]",
        "peers.profit.prob_threshold=0.004",
        "peers.xtf.novelty_min=0.002",
        "report=true",
    )
    summary = run(cfg)
    _check_peer_report(tmp_path / "run", summary)
    rec = {
        n: summary["methods"][n]["recovery"] for n in ("full", "profit", "dft", "xtf", "soft_token_cleaning")
    }
    total = rec["full"]["response_tokens"]
    assert all(r["response_tokens"] == total for r in rec.values())
    assert rec["dft"]["kept_tokens"] == rec["full"]["kept_tokens"]  # DFT weights every token it sees
    assert 0 < rec["profit"]["kept_tokens"] < total  # ProFit counted only some of them
    assert 0 < rec["xtf"]["kept_tokens"] < total
    assert rec["soft_token_cleaning"]["auroc"] is not None  # ranked by the fixed-model score
    # what each peer cost: its no-grad passes, XTF's base pass over the pool, soft TC's warm-up and scoring
    b = {n: summary["methods"][n]["budget"] for n in ("full", "profit", "dft", "xtf", "soft_token_cleaning")}
    assert b["dft"]["forward_tokens"] == b["dft"]["backward_tokens"] == b["full"]["backward_tokens"]
    assert b["profit"]["forward_tokens"] == 2 * b["profit"]["backward_tokens"]  # + one no-grad pass
    pool = json.loads((tmp_path / "run" / "data" / "pool" / "manifest.json").read_text())["tokens"]["total"]
    assert b["xtf"]["forward_tokens"] == b["xtf"]["backward_tokens"] + pool
    warm = json.loads((tmp_path / "run" / "warmup" / "done.json").read_text())["tokens"]["input"]
    assert b["soft_token_cleaning"]["backward_tokens"] == b["full"]["backward_tokens"] + warm
    assert b["soft_token_cleaning"]["forward_tokens"] > b["soft_token_cleaning"]["backward_tokens"]  # scoring
    # soft methods report each truth label's mean training weight; hard ones only the share kept
    for name in ("full", "profit", "dft", "xtf", "soft_token_cleaning"):
        rows = summary["methods"][name]["classes"].values()
        soft = name in ("dft", "soft_token_cleaning")
        assert all(("mean_weight" in r) == soft for r in rows), name
        if soft:
            assert all(0.0 <= r["mean_weight"] <= r["kept"] + 1e-9 for r in rows), name
            assert any(0.0 < r["mean_weight"] < 1.0 for r in rows), name


NEW = ["eaft", "top_entropy", "toss", "neg_prob"]


@pytest.mark.requires("matplotlib")  # the report
def test_methods_added_through_the_registry_run_and_are_measured(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """EAFT, top-entropy, TOSS (second reference: the full-tokens adapter of the same run) and the -p loss
    run from `tokenclean run` with nothing but their registry entries: trained, measured against the truth,
    budgeted by their declared passes, drawn in the report."""
    cfg = tiny_cfg(
        tmp_path,
        tiny_model_dir,
        f"methods=[full,{','.join(NEW)}]",
        "data.synthetic={n_facts: 4, repeats: 3, noise_rate: 0.5, seed: 0}",
        "selection.sweep=[]",
        "peers.toss.reference_a=method:full",
        "peers.neg_prob.exponent=2",
        "report=true",
    )
    summary = run(cfg)
    root = tmp_path / "run"
    assert_schema(root)
    ms = summary["methods"]
    assert {n: ms[n]["policy"]["name"] for n in NEW} == {
        "eaft": "eaft",
        "top_entropy": "top_entropy",
        "toss": "labels",
        "neg_prob": "neg_prob",
    }
    assert ms["neg_prob"]["policy"]["settings"]["exponent"] == 2.0  # typed settings reached the policy
    total = ms["full"]["recovery"]["response_tokens"]
    assert all(ms[n]["recovery"]["response_tokens"] == total for n in NEW)
    assert ms["eaft"]["recovery"]["kept_tokens"] == ms["full"]["recovery"]["kept_tokens"]  # soft: all count
    assert 0 < ms["top_entropy"]["recovery"]["kept_tokens"] < total
    assert 0 < ms["toss"]["recovery"]["kept_tokens"] < total and ms["toss"]["recovery"]["auroc"] is not None
    b = {n: ms[n]["budget"] for n in ["full", *NEW]}
    assert b["eaft"]["forward_tokens"] == b["eaft"]["backward_tokens"] == b["full"]["backward_tokens"]
    assert b["neg_prob"]["forward_tokens"] == b["full"]["forward_tokens"]
    assert b["top_entropy"]["forward_tokens"] == 2 * b["top_entropy"]["backward_tokens"]  # one no-grad pass
    # TOSS: its training, the trainings behind its references (the warm-up; full's training) and two stores
    # (base + reference passes each)
    stores = [json.loads((root / p / "manifest.json").read_text()) for p in ms["toss"]["score_stores"]]
    assert len(stores) == 2
    scored = sum(2 * st["counts"]["tokens"] for st in stores)
    warm = json.loads((root / "warmup" / "done.json").read_text())["tokens"]["input"]
    assert b["toss"]["forward_tokens"] == b["toss"]["backward_tokens"] + scored
    assert b["toss"]["backward_tokens"] == warm + _trained(root, ms["full"]) + _trained(root, ms["toss"])
    for name in ("eaft", "neg_prob"):  # soft: each truth label's mean training weight
        assert all("mean_weight" in r for r in ms[name]["classes"].values()), name
    html = (root / "report" / "index.html").read_text()
    for label in ("EAFT", "Top-entropy tokens", "TOSS", "-p loss"):
        assert label in html


def _trained(root: Path, m: dict) -> int:
    return json.loads((root / m["adapter"] / ".." / "done.json").read_text())["tokens"]["input"]


def _check_peer_report(root: Path, summary: dict) -> None:
    """The report of a peer run: the per-label figure, ProFit's samples show exactly the tokens it counted
    in its last epoch, DFT's and soft Token Cleaning's tokens carry their weights (shaded)."""
    import re
    from html import unescape

    from tokenclean.training.counted import counted_tokens

    report = root / "report"
    assert (report / "figures" / "classes.png").is_file()
    page = (report / "index.html").read_text()
    articles = re.findall(r'<article class="sample filterable" data-method="([^"]+)" data-round="[^"]*" '
                          r'data-sample-id="([^"]+)">(.*?)</article>', page, re.S)  # fmt: skip
    by_method: dict[str, list[tuple[str, str]]] = {}
    for method, sid, body in articles:
        by_method.setdefault(method, []).append((unescape(sid), body))
    assert {"profit", "dft", "soft_token_cleaning", "xtf"} <= set(by_method)
    m = summary["methods"]["profit"]
    counted = counted_tokens(root / m["counted"], root / m["cleaned"])
    for sid, body in by_method["profit"]:
        spans = re.findall(r'<span class="t (\w+)[^"]*"', body)
        got = {j for j, c in enumerate(spans) if c == "kept"}
        assert got == set(counted.get(sid, {})), sid
        assert "counted " in body and "(last epoch)" in body
    # the same from the training directory alone (a stage output, as after `tokenclean train`)
    from tokenclean.report import build_report

    built = build_report([f"profit={root / m['counted']}"], out=root / "stage_report")
    assert "(last epoch)" in built["index.html"].read_text()
    for name in ("dft", "soft_token_cleaning"):
        weights = [
            float(w) for _, body in by_method[name] for w in re.findall(r'data-weight="([^"]+)"', body)
        ]
        assert weights and all(0.0 <= w <= 1.0 for w in weights), name
        assert any(0 < w < 1 for w in weights), name
        assert any(re.search(r'class="t kept[^"]*\bw"[^>]*style="--w:', b) for _, b in by_method[name]), name
