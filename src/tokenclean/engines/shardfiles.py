"""Shard files of a dataset built by engine tasks: one Arrow data file per task, its marker written after
it, and an index step that turns the finished shards into a ``datasets.save_to_disk`` directory.

Layout while the tasks run (the names of :func:`tokenclean.scoring.store.shard_paths`)::

    OUT/.work/data-00001-of-00004.arrow   task 1's rows (written to a temporary name, fsynced, renamed)
    OUT/.work/shard-00001-of-00004.json   its marker: size, SHA-256, counts (written last, atomically)

A shard counts as done only when its marker exists and names a file of the recorded size
(:func:`tokenclean.scoring.store.shard_done`), so a task killed at any moment leaves no shard that reads as
finished, and a rerun of that task rewrites it from scratch. :func:`write_dataset_index` moves the data
files into ``OUT`` in task order and writes ``state.json`` and ``dataset_info.json`` beside them (no data
is read or concatenated); the caller writes its marker file (``manifest.json``) last.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any

from tokenclean.errors import TokencleanError
from tokenclean.scoring.store import shard_done, shard_paths, work_dir
from tokenclean.utils import read_json, sha256_file, write_json_atomic


class ShardError(TokencleanError):
    """An engine stage's shards are missing or do not belong together."""


class ShardWriter:
    """Task ``index``'s data file written record batch by record batch (memory: one batch, whatever the
    shard), then hashed once and marked (:meth:`close`). Rows go in as pyarrow Tables in ``features``'
    schema (:meth:`write`); nothing reads as finished until the marker is written after the file."""

    def __init__(self, out: Path, index: int, num: int, features: Any) -> None:
        self.out, self.index, self.num, self.features = Path(out), index, num, features
        self.path, self.marker = shard_paths(self.out, index, num)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp")
        self.rows = 0
        self._writer: Any = None

    def write(self, table: Any) -> None:
        if not table.num_rows:
            return
        if self._writer is None:
            from datasets.arrow_writer import ArrowWriter

            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = ArrowWriter(features=self.features, path=str(self.tmp))
        self._writer.write_table(table.cast(self.features.arrow_schema))
        self.rows += table.num_rows

    def close(self, info: dict[str, Any]) -> dict[str, Any]:
        """Finish the file (none when no row was written), hash it, write the marker holding ``info`` plus
        ``index``, ``num``, ``file``, ``size`` and ``sha256``. Returns the marker."""
        self.marker.parent.mkdir(parents=True, exist_ok=True)
        info = dict(info, index=self.index, num=self.num, file=None)
        if self._writer is not None:
            try:
                self._writer.finalize()
            finally:
                self._writer.close()
            _fsync(self.tmp)
            os.replace(self.tmp, self.path)
            info.update(file=self.path.name, size=self.path.stat().st_size, sha256=sha256_file(self.path))
        write_json_atomic(self.marker, info)
        return info

    def abort(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()


def write_arrow_shard(out: Path, index: int, num: int, table: Any, features: Any, info: dict) -> dict:
    """Write task ``index``'s rows (a pyarrow Table, possibly empty) as ``OUT/.work/data-*.arrow``, hash it
    once, then its marker holding ``info`` plus ``file``, ``size`` and ``sha256``. Returns the marker."""
    w = ShardWriter(out, index, num, features)
    try:
        w.write(table)
        return w.close(info)
    except BaseException:
        w.abort()
        raise


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def done_markers(out: Path, num: int, what: str) -> list[dict[str, Any]]:
    """The markers of the ``num`` shards of ``out`` (every one finished), else a :class:`ShardError` naming
    the missing tasks."""
    markers = [_finished(out, i, num) for i in range(num)]
    missing = [i for i, m in enumerate(markers) if m is None]
    if missing:
        raise ShardError(
            f"{work_dir(out)}: the {what} shards of tasks {missing[:10]} are missing or unfinished; rerun the "
            "same command (finished shards are kept, the missing ones are redone)"
        )
    return [m for m in markers if m is not None]


def _finished(out: Path, index: int, num: int) -> dict[str, Any] | None:
    """Shard ``index``'s marker when it is finished: its file in ``.work``, or already moved into ``out`` by
    an index step that was interrupted."""
    m = shard_done(out, index, num)
    if m is not None:
        return m
    marker = shard_paths(out, index, num)[1]
    if not marker.exists():
        return None
    m = dict(read_json(marker))
    moved = out / str(m.get("file"))
    return m if m.get("file") and moved.is_file() and moved.stat().st_size == m["size"] else None


def write_dataset_index(
    out: Path, markers: list[dict[str, Any]], features: Any, fingerprint: str
) -> dict[str, dict[str, Any]]:
    """Move the shards' data files into ``out`` in task order and write ``state.json`` and
    ``dataset_info.json`` (``state.json`` last). Returns the file digests: the data files' from their
    markers (hashed once, by their writers), the two JSON files' hashed now."""
    import datasets

    tmp = work_dir(out) / "index"
    shutil.rmtree(tmp, ignore_errors=True)
    empty = datasets.Dataset.from_dict({k: [] for k in features}, features=features)
    empty.save_to_disk(str(tmp))  # datasets' own state.json and dataset_info.json, for no rows
    state = read_json(tmp / "state.json")
    names = [m["file"] for m in markers if m["file"]]
    state["_data_files"] = [{"filename": n} for n in names]
    state["_fingerprint"] = fingerprint[:16]
    write_json_atomic(tmp / "state.json", state)
    files = {m["file"]: {"size": m["size"], "sha256": m["sha256"]} for m in markers if m["file"]}
    for n in names:
        if (work_dir(out) / n).exists():  # else moved by an interrupted index step
            os.replace(work_dir(out) / n, out / n)
    for name in ("dataset_info.json", "state.json"):
        os.replace(tmp / name, out / name)
        files[name] = {"size": (out / name).stat().st_size, "sha256": sha256_file(out / name)}
    return files


def drop_work(out: Path) -> None:
    """Remove ``OUT/.work`` (after the marker file was written)."""
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(work_dir(out))
