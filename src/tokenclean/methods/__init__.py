"""The method registry: every method of ``tokenclean run``, declared once as a
:class:`~tokenclean.methods.spec.MethodSpec` beside its code.

The run config's method list and ``peers:`` section, the runner's pipelines, budgets, ground-truth recovery
sources, report labels and order, and the token-policy names of ``tokenclean train --policy`` are all derived
from :func:`specs`. A new method is one module here with a ``SPEC`` (and its policy or pipeline), plus its
line in ``_MODULES``.
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import TYPE_CHECKING, Any

from tokenclean.config import settings_dict
from tokenclean.errors import ConfigError
from tokenclean.methods.spec import Kind, MethodSpec

if TYPE_CHECKING:
    from tokenclean.training.policies import Policy

# report and listing order: the paper's methods, then the peers in the order they were added
_MODULES = (
    "online_rho1",
    "sstoken",
    "xtf",
    "dft",
    "profit",
    "soft_token_cleaning",
    "eaft",
    "top_entropy",
    "toss",
    "neg_prob",
)


@cache
def specs() -> tuple[MethodSpec, ...]:
    from tokenclean.methods.paper import SPECS

    peers = tuple(importlib.import_module(f"tokenclean.methods.{m}").SPEC for m in _MODULES)
    out = SPECS + peers
    names = [s.name for s in out]
    assert len(set(names)) == len(names), f"duplicate method names in the registry: {names}"
    return out


def names() -> tuple[str, ...]:
    return tuple(s.name for s in specs())


def get(name: str, prefix: str = "methods") -> MethodSpec:
    """The spec of method ``name``; an unknown name is a ConfigError listing the valid ones."""
    for s in specs():
        if s.name == name:
            return s
    raise ConfigError(f"{prefix}: unknown method {name!r} (valid: {', '.join(names())})")


@cache
def _policies() -> dict[str, type[Policy]]:
    from tokenclean.training.policies import GENERIC_POLICIES

    out: dict[str, type[Policy]] = {p.name: p for p in GENERIC_POLICIES}
    for s in specs():
        if s.policy is not None:
            out[s.policy.name] = s.policy
    return out


def policy_names() -> list[str]:
    return sorted(_policies())


def policy_class(name: str, prefix: str = "train.policy") -> type[Policy]:
    """The token policy class of ``tokenclean train --policy NAME``."""
    pols = _policies()
    if name not in pols:
        raise ConfigError(f"{prefix}: unknown token policy {name!r} (valid: {', '.join(sorted(pols))})")
    return pols[name]


def method_settings(peers: Any, spec: MethodSpec) -> Any:
    """The typed settings of ``spec`` in a run config's ``peers`` section."""
    return getattr(peers, spec.name) if spec.settings is not None else None


__all__ = [
    "Kind",
    "MethodSpec",
    "get",
    "method_settings",
    "names",
    "policy_class",
    "policy_names",
    "settings_dict",
    "specs",
]
