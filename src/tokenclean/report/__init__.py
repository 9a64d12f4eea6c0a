"""Report stage: terminal inspection, tables, plots and the token-highlight HTML page.

``build_report(run_dirs, out=None, tokenizer=None, cfg=None)`` writes a run's report (see
:mod:`tokenclean.report.build`); it is imported lazily so that importing this package stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ReportConfig", "build_report"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from tokenclean.report import build

        return getattr(build, name)
    raise AttributeError(f"module 'tokenclean.report' has no attribute {name!r}")
