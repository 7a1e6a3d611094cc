"""The bookkeeping every stage shares: inputs, resumable outputs, the sidecar meta, counts, signals.

A stage function opens a :class:`StageRun`, asks it which input records are
still to do, hands each finished record to :meth:`StageRun.write`, and closes
it; the run writes the sidecar meta and returns the counts. Progress
(:mod:`sca.records.progress`) and summaries go to stderr, so ``-o -`` keeps stdout pure JSONL.

Three promises are kept here, once for every stage:

* **A resume never mixes settings.** Each stage declares which of its settings change what it writes
  (its ``RESULT_SETTINGS``: dotted paths into its settings, such as ``executor.temperature``); a run onto
  an output that already holds records compares them with the ones its sidecar recorded and stops with
  :class:`SettingsChanged` (one line naming each difference) before anything is written, and before
  the stage loads a model if it opens the run first. The other settings (concurrency, workers, servers)
  may change between runs. Each record names the run that made it (``run``, also in the sidecar).
* **Signals.** SIGINT and SIGTERM raise :class:`Interrupted` in the main thread; whatever record was
  being written is written whole or not at all (one ``write`` call per line), the sidecar says
  ``"status": "interrupted"``, one line says how to resume, and the command exits 128 + the signal.
* **Provenance.** Every sidecar records the library versions, the checkout's commit and the host
  (:mod:`sca.records.provenance`).

A stage whose records hold a conversation (rollout, eval) may ask for ``system_prompt_refs``: each record's
system prompt (the same ~11 KB for every task of an environment) is then written once, in the sidecar's
``system_prompts`` by hash, and the record names it (docs/TRAJECTORY.md); the sidecar is saved with a new
prompt before the first record naming it, so no record on disk names a prompt its sidecar lacks.
"""

from __future__ import annotations

import datetime as _dt
import json
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from sca import __version__
from sca.records.io import STDIO, InputError, Loaded, RecordWriter, chosen_by_default, write_json_atomic
from sca.records.provenance import provenance
from sca.records.schema import PROMPT_REF, prompt_sha256, with_field

#: setting names that never change what a stage writes, wherever they sit in its settings
NEVER_RESULT = frozenset({"concurrency", "workers", "base_urls"})
#: the sandbox's limits: budgets that change verdicts (its backend, workers and image do not)
SANDBOX_LIMITS = ("timeout", "memory_mb", "max_procs", "output_limit", "max_tool_calls", "max_tool_bytes",
                  "max_depth")
#: what of a model's settings changes its replies (its servers do not)
MODEL_SETTINGS = ("model", "backend", "temperature", "top_p", "max_new_tokens")


def under(prefix: str, names: Iterable[str]) -> tuple[str, ...]:
    """Dotted paths of `names` under `prefix` (``under("sandbox", SANDBOX_LIMITS)``)."""
    return tuple(f"{prefix}.{n}" for n in names)


def _leaves(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict) and value:
        for k, v in value.items():
            yield from _leaves(v, f"{prefix}.{k}" if prefix else str(k))
    else:
        yield prefix, value


def result_settings(settings: dict[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """The settings of `settings` that change results: the leaves under any of the dotted paths `keys` (a
    path names a setting or a group of them: ``user`` is every setting of the simulated user's, or None),
    less :data:`NEVER_RESULT`."""
    keys = tuple(keys)
    out = {}
    for path, value in _leaves(settings):
        if path.rsplit(".", 1)[-1] in NEVER_RESULT:
            continue
        if any(path == k or path.startswith(k + ".") or k.startswith(path + ".") for k in keys):
            out[path] = value
    return out


def _show(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value


def differences(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The settings that differ, each in both runs; a setting the earlier run did not record (an older
    sca) is not compared. A group that was None and is now set (or the other way) differs as a whole."""
    out = []
    for path in sorted(set(before) | set(now)):
        group = path.split(".", 1)[0]
        if path not in before and not any(p == group or p.startswith(group + ".") for p in before):
            continue  # the earlier run's sca had no such setting
        if before.get(path, "-") != now.get(path, "-"):
            out.append(path)
    return out


class SettingsChanged(InputError):
    """A run would resume an output made with other result-changing settings."""


def refuse_other_settings(outputs: list[str], settings: dict[str, Any], keys: Iterable[str]) -> None:
    """Raise :class:`SettingsChanged` if one of `outputs` (files; the first is the one with the sidecar)
    holds records and the sidecar recorded other result-changing settings (`keys`) than `settings` has.
    :class:`StageRun` calls it; a stage that changes its output before opening the run (dropping the
    infrastructure failures it will retry) calls it first."""
    keys = tuple(keys)
    files = [p for p in outputs if p and p != STDIO]
    if not keys or not files or not any(Path(p).is_file() and Path(p).stat().st_size for p in files):
        return
    try:
        old = json.loads(Path(files[0] + ".meta.json").read_text())
    except (OSError, ValueError):
        return  # no sidecar: what the records say of themselves is the stage's to check
    if not isinstance(old, dict):
        return
    before = old.get("result_settings")
    if not isinstance(before, dict):  # a sidecar of an sca that did not record them: from its settings
        before = result_settings(old.get("settings") or {}, keys)
    refuse_changed(files[0], before, result_settings(settings, keys))


def refuse_changed(where: str | Path, before: dict[str, Any], now: dict[str, Any], *, kind: str = "file") -> None:
    """Raise :class:`SettingsChanged` naming each of :func:`differences` of `before` (what made `where`, a
    `kind`: file or directory) and `now`, in both runs; nothing if there is none."""
    changed = differences(before, now)
    if changed:
        def both(values: dict[str, Any]) -> str:
            return " ".join(f"{k}={_show(values.get(k, '-'))}" for k in changed)

        raise SettingsChanged(f"{where}: made with {both(before)}; this run: {both(now)} "
                              f"(--overwrite starts afresh, or write to another {kind})")


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived: a stage stops, keeping what it wrote. `exit_code`: 128 + the signal."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = 128 + int(signum)


def exit_code(interrupt: BaseException) -> int:
    """The exit code of a command stopped by `interrupt` (a KeyboardInterrupt): 128 + the signal."""
    return getattr(interrupt, "exit_code", 128 + int(signal.SIGINT))


@contextmanager
def _signals_raise() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` in the main thread (once: a second signal while the
    first is handled is held, so the sidecar is written; after that each has its old handler again).
    Nothing changes outside the main thread, or for a signal the process ignores (a background job's
    SIGINT)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def hold(signum: int, frame: Any) -> None:
        pass

    def handler(signum: int, frame: Any) -> None:
        for s in old:
            signal.signal(s, hold)
        raise Interrupted(signum)

    for s, h in old.items():
        if h is not signal.SIG_IGN:
            signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


@contextmanager
def stopping_pool(workers: int, name: str) -> Iterator[ThreadPoolExecutor]:
    """A thread pool that, left by an exception (an interrupt), cancels what has not started and does not
    wait for what has: a running task's sandbox run ends when the stage closes its sandbox, and an
    interrupted stage must not sit out every queued task's checks first."""
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def map_tasks(records: list[dict[str, Any]], workers: int, name: str,
              work: Callable[[dict[str, Any], Any], dict[str, Any]],
              on_result: Callable[[dict[str, Any]], None]) -> None:
    """``work(task, env)`` for each task, in parallel over at most `workers` threads (a :func:`stopping_pool`),
    each thread with its own instance of each environment (``task["env"]``); `on_result` gets each result in
    input order."""
    from envs import make_env

    local = threading.local()

    def one(task: dict[str, Any]) -> dict[str, Any]:
        envs = local.__dict__.setdefault("envs", {})
        if task["env"] not in envs:
            envs[task["env"]] = make_env(task["env"])
        return work(task, envs[task["env"]])

    with stopping_pool(max(1, min(workers, len(records) or 1)), name) as pool:
        for result in pool.map(one, records):
            on_result(result)


class StageRun:
    """One run of a stage over its outputs (``outputs`` maps a role to a path).

    `settings`: what the sidecar records of the run; `result`: the dotted paths of those that change
    what the stage writes (its ``RESULT_SETTINGS``): an output already holding records made with
    others is refused (:class:`SettingsChanged`) unless `overwrite`, which starts afresh."""

    def __init__(
        self,
        stage: str,
        outputs: dict[str, str | None],
        *,
        inputs: list[Loaded] = (),  # type: ignore[assignment]
        settings: dict[str, Any] | None = None,
        result: Iterable[str] = (),
        overwrite: bool = False,
        system_prompt_refs: bool = False,
    ):
        paths = {role: p for role, p in outputs.items() if p}
        real = [p for p in paths.values() if p != STDIO]
        if len(set(real)) != len(real):
            raise InputError(f"the outputs must be different files (got {', '.join(real)})")
        for p in real:
            if Path(p).is_dir():
                raise InputError(f"{p}: is a directory; -o names the file to write")
        self.stage = stage
        self.primary = next(iter(paths.values()))
        self.result_keys = tuple(result)
        self.result = result_settings(settings or {}, self.result_keys)
        if not overwrite:
            refuse_other_settings(real, settings or {}, self.result_keys)
        self.run_id = uuid.uuid4().hex[:8]
        self.writers = {role: RecordWriter(p, overwrite=overwrite) for role, p in paths.items()}
        self.done_ids: set[str] = set()
        for w in self.writers.values():
            self.done_ids |= w.done_ids
        self.counts: Counter[str] = Counter()
        self.counts["resumed"] = len(self.done_ids)
        self.torn = sum(1 for w in self.writers.values() if w.torn_bytes)
        self.started = time.monotonic()
        self.meta = RunMeta(self.primary, stage, inputs, settings)
        self.meta.data["run"] = self.run_id
        self.meta.data["result_settings"] = self.result
        self.meta.data["outputs"] = paths
        self.meta.start(overwrite=overwrite)
        self._closed = False
        self._interrupted = False
        self._signals: Any = None
        # the outputs whose records name their system prompt: files beside a sidecar (standard output has
        # none to hold the text, and its records keep theirs)
        self.prompt_refs = {role for role, w in self.writers.items()
                            if system_prompt_refs and w.path != STDIO and self.meta.path is not None}
        self._prompt_lock = threading.Lock()

    def pending(self, records: list[dict[str, Any]], id_field: str = "id") -> list[dict[str, Any]]:
        """The records whose id is not yet in any output."""
        return [r for r in records if str(r[id_field]) not in self.done_ids]

    def pending_input(self, loaded: Loaded) -> list[dict[str, Any]]:
        """The records of a stage's one input (one output record per input record) not yet in any output;
        counts them (``input``), the invalid lines skipped (``skipped_invalid``) and those already done
        (``resumed``)."""
        todo = self.pending(loaded.records)
        self.counts["input"] = len(loaded.records)
        self.counts["skipped_invalid"] = len(loaded.skipped)
        self.counts["resumed"] = len(loaded.records) - len(todo)
        return todo

    def write(self, role: str, record: dict[str, Any]) -> None:
        """Write a finished record to the output for `role` (dropped, but counted, if that output is off),
        naming this run (``run``). After an interrupt, records still arriving (from work cut short) are
        dropped: the rerun does them."""
        if self._interrupted:
            return
        self.counts[role] += 1
        writer = self.writers.get(role)
        if writer is not None:
            if role in self.prompt_refs:
                record = self._prompt_by_reference(record)
            writer.write(with_field(record, "run", self.run_id))  # before the conversation: read by hand

    def _prompt_by_reference(self, record: dict[str, Any]) -> dict[str, Any]:
        """The record with its system prompt's text replaced by its hash, the text in the sidecar (saved
        first if it is new there). The record given is left as it was."""
        messages = record.get("messages")
        first = messages[0] if isinstance(messages, list) and messages else None
        if not (isinstance(first, dict) and first.get("role") == "system" and isinstance(first.get("content"), str)):
            return record
        digest = prompt_sha256(first["content"])
        with self._prompt_lock:
            if digest not in self.meta.system_prompts:
                self.meta.system_prompts[digest] = first["content"]
                self.meta.save()  # on disk before any record that names it
        return {**record, "messages": [{**first, "content": None, PROMPT_REF: digest}, *messages[1:]]}

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def close(self, status: str = "finished", extra: dict[str, Any] | None = None) -> dict[str, Any]:
        if self._closed:
            return dict(self.counts)
        self._closed = True
        for w in self.writers.values():
            w.close()
        counts: dict[str, Any] = dict(self.counts)
        counts["seconds"] = round(self.elapsed, 3)
        if extra:
            counts.update(extra)
        self.meta.finish(counts, status=status)
        return counts

    def resume_hint(self) -> str:
        """The one line an interrupted run prints: how to resume, and what its outputs keep."""
        kept = [(p, len(w.done_ids)) for p, w in ((w.path, w) for w in self.writers.values()) if p != STDIO]
        if not kept:
            return "interrupted: the output went to stdout; a rerun starts afresh"
        what = ", ".join(f"{n} records kept in {p}" for p, n in kept)
        if chosen_by_default(self.primary):
            return f"interrupted: rerun the same command with -o {self.primary} to resume ({what})"
        return f"interrupted: rerun the same command to resume ({what})"

    def __enter__(self) -> "StageRun":
        self._signals = _signals_raise()
        self._signals.__enter__()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is None:
                self.close()
            elif issubclass(exc_type, KeyboardInterrupt):
                self._interrupted = True
                self.close(status="interrupted")
                print(self.resume_hint(), file=sys.stderr, flush=True)
            else:
                self.close(status=f"failed: {exc_type.__name__}")
        finally:
            if self._signals is not None:
                self._signals.__exit__(None, None, None)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class RunMeta:
    """The ``OUTPUT.meta.json`` sidecar: how an output file was made.

    Holds the run's id, the command line, sca version, inputs with hashes, settings (model, sampling,
    seed...) and the result-changing ones among them, where it ran (library versions, commit, host),
    start and end times, status and counts. A resumed run keeps the earlier runs' entries under
    ``previous_runs``, and their ``system_prompts`` (the texts its records name by hash: last, as the
    longest). Written atomically.
    """

    def __init__(self, output: str | Path, stage: str, inputs: Iterable[Loaded] = (), settings: dict[str, Any] | None = None):
        self.output = str(output)
        self.path = None if self.output == STDIO else Path(self.output + ".meta.json")
        previous: list[dict[str, Any]] = []
        #: the system prompts the output's records name by hash (:meth:`StageRun._prompt_by_reference`)
        self.system_prompts: dict[str, str] = {}
        if self.path is not None and self.path.exists():
            try:
                old = json.loads(self.path.read_text())
                previous = old.pop("previous_runs", [])
                prompts = old.pop("system_prompts", None)
                previous.append(old)
                if isinstance(prompts, dict):  # the earlier runs' records still name them
                    self.system_prompts.update(prompts)
            except (ValueError, OSError, AttributeError):
                previous = []
        self.data: dict[str, Any] = {
            "stage": stage,
            "command": [Path(sys.argv[0]).name] + sys.argv[1:],
            "sca_version": __version__,
            "provenance": provenance(),
            "inputs": [i.describe() for i in inputs],
            "settings": settings or {},
            "started_at": _now(),
            "ended_at": None,
            "status": "running",
            "counts": {},
            "previous_runs": previous,
        }

    def start(self, overwrite: bool = False) -> None:
        if overwrite:
            self.data["previous_runs"] = []
            self.system_prompts.clear()
        self.save()

    def finish(self, counts: dict[str, Any], status: str = "finished") -> None:
        self.data["counts"] = counts
        self.data["status"] = status
        self.data["ended_at"] = _now()
        self.save()

    def save(self) -> None:
        if self.path is None:
            return
        if self.system_prompts:  # only where there are some: other stages' sidecars are as before
            self.data["system_prompts"] = self.system_prompts
        write_json_atomic(self.path, self.data)
