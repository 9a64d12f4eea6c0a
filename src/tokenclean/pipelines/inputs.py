"""Every input a run names, checked before the run directory is created: a typo in a model, data or
held-out path fails at once, naming the config key, and leaves nothing behind."""

from __future__ import annotations

from pathlib import Path

from tokenclean.errors import ConfigError, DataError, ModelError
from tokenclean.pipelines.config import RunConfig


def check_data_source(key: str, src: str) -> None:
    """``src`` of config key ``key`` is an existing path, ``builtin:NAME``, ``hub:NAME`` or (online) a Hub-like
    ``ORG/NAME``; its first record is read, so a wrong format also fails here."""
    from tokenclean.data.formats import builtin_path, hub_offline, iter_raw_rows

    if src.startswith("hub:"):
        return
    if src.startswith("builtin:"):
        try:
            builtin_path(src.removeprefix("builtin:"))
        except DataError as e:
            raise ConfigError(f"{key}: {e}") from None
        return
    p = Path(src)
    if not p.exists():
        hub_like = "/" in src and not src.startswith((".", "/")) and not p.suffix
        if hub_like and not hub_offline():
            return  # a Hub dataset; read when the stage runs
        raise ConfigError(f"{key}: '{src}': no such file or directory")
    try:
        next(iter_raw_rows(src), None)
    except DataError as e:
        raise ConfigError(f"{key}: {e}") from None


def check_inputs(cfg: RunConfig) -> None:
    """Models (:func:`tokenclean.models.names.check_model_name`) and data files of ``cfg``."""
    from tokenclean.models.names import check_model_name

    for key, name in (("model.base", cfg.model.base), ("model.reference", cfg.model.reference)):
        if name:
            try:
                check_model_name(name, key)
            except ModelError as e:
                raise ConfigError(str(e)) from None
    d = cfg.data
    if cfg.eval.suite == "quick" and not d.heldout and not cfg.eval.tasks and d.synthetic is None:
        raise ConfigError(
            "data.heldout: required by eval.suite=quick (the response loss on held-out data; cut one: "
            f"tokenclean split --data {d.path or 'FILE'} --heldout 0.1 --out splits), or eval.suite=none "
            "to skip the evaluation"
        )
    sources: list[tuple[str, str | None]] = [] if d.synthetic is not None else [("data.path", d.path)]
    sources += [("data.heldout", d.heldout), ("data.truth", d.truth)]
    if cfg.warmup.data != "synthetic:clean":
        sources.append(("warmup.data", cfg.warmup.data))
    for key, src in sources:
        if src:
            check_data_source(key, src)
    if d.heldout and not d.skip_invalid and not d.heldout.startswith("hub:"):
        _check_records("data.heldout", d.heldout, d.format)


def _check_records(key: str, src: str, fmt: str) -> None:
    """Every record of a (small) file parses: a bad held-out row stops the run before anything is written."""
    from tokenclean.data.formats import read_records

    try:
        for _ in read_records(src, fmt):
            pass
    except DataError as e:
        raise ConfigError(f"{key}: {e}") from None
