"""The README holds exactly two set-up commands, and .ci/run runs the README's test command verbatim (and the
main job's install)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def setup_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Set-up: two commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)\n```", section, flags=re.S)


def test_exactly_two_setup_commands_and_ci_runs_the_test_one() -> None:
    cmds = setup_commands()
    assert len(cmds) == 2 and all("\n" not in c for c in cmds)
    main_job, tests = cmds
    assert main_job.startswith("pip install torch==2.13.0 ") and "tokenclean" in main_job
    assert tests.startswith("pip install torch==2.13.0 ") and "pytest" in tests
    ci = (ROOT / ".ci" / "run").read_text()
    ci_lines = [ln.strip().replace("pip install -q ", "pip install ") for ln in ci.splitlines()]
    ci_lines = [ln for ln in ci_lines if ln.startswith("pip install")]
    assert len(ci_lines) == 2  # the main job's install ([demo]) and the test command
    assert ci_lines[1] == tests
    assert main_job.startswith(ci_lines[0] + " && tokenclean demo")


def test_methods_table_lists_every_registered_method_once() -> None:
    from tokenclean import methods

    section = (ROOT / "README.md").read_text().split("## Methods", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \|", section, flags=re.M)
    assert sorted(rows) == sorted(methods.names()) and len(rows) == len(set(rows))
