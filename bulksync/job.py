"""Job files: a nightly import's syncs (companies, then people, then memberships, then the day's
events) in one reviewable file, run in order by one command: `bulksync run JOB.toml`.

```toml
rate = 100                 # sending settings shared by the steps (a step may override them)
batch = true
results_dir = "results"    # each step's results file: results/<step>.results.jsonl
state_dir = "state"        # optional: each step's --state file, state/<step>.state.sqlite

[[steps]]
name = "companies"
input = "companies.csv"
kind = "objects"           # any mapping key, over the step's mapping or preset file's
mapping = "companies.toml"
```

The whole file is checked before anything is sent: every key, every step's mapping, and every
step's input header against it. Steps run in order; a step that stops (exit 2 or 3) stops the
job. The job's record (`RESULTS_DIR/job.json`) says which steps finished: the same command
resumes an unfinished job at the step that stopped (which resumes its own results file), and
starts a finished one over, for the next night's files. An unfinished job whose finished steps'
inputs have changed since is not resumed (exit 2: --fresh starts it over). Paths are relative
to the job file.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from . import mapping as mappings
from .answers import Credentials
from .api import SyncOptions, check_input, sync
from .connection import SendOptions
from .errors import BulksyncError, OutputError, UsageError
from .files import check_output, open_private, take_lock
from .outcomes import Progress
from .results import InputIdentity, Summary, read_header
from .source import SourceOptions
from .stop import StopHandle

_NUMBER = (int, float)
# Sending settings: the job's, which a step may override; named as sync's options.
SEND_KEYS: dict[str, tuple[type, ...]] = {
    "region": (str,),
    "rate": _NUMBER,
    "concurrency": (int,),
    "max_retries": (int,),
    "max_wait": _NUMBER,
    "timeout": _NUMBER,
    "batch": (bool,),
    "batch_size": (int,),
    "grace": _NUMBER,
}
JOB_KEYS = {**SEND_KEYS, "results_dir": (str,), "state_dir": (str,), "steps": (list,)}
STEP_KEYS = {
    **SEND_KEYS,
    "name": (str,),
    "input": (str,),
    "mapping": (str,),
    "preset": (str,),
    "yes": (bool,),  # the step may send an irreversible kind (deletions...)
    "state": (bool,),  # false: no state file for this step even with state_dir
    "missing": (str,),  # mirror mode, as sync's --missing (needs the state, and yes)
    "max_missing": (str,),
}
# A tuple, not a set: the keys are listed in messages, in the same order on every run.
MAPPING_KEYS = (*mappings.SETTINGS, "set", "columns")
_STEP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_STEP_HEADER = re.compile(r"\s*\[\[\s*steps\s*\]\]")
RECORD_NAME = "job.json"


@dataclass(frozen=True)
class Step:
    name: str
    input: str
    options: SyncOptions


@dataclass(frozen=True)
class Job:
    path: Path
    steps: tuple[Step, ...]
    results_dir: Path


@dataclass
class StepResult:
    """A step's outcome in a run of the job: its summary, or why it did not finish."""

    step: Step
    status: str  # done, resumed (finished in an earlier run), stopped, not run
    summary: dict[str, Any] = field(default_factory=dict)  # Summary.as_dict()
    exit_code: int | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "step": self.step.name,
            "kind": self.step.options.normalize.kind,
            "input": self.step.input,
            "status": self.status,
            "exit_code": self.exit_code,
            "error": self.error,
            **{k: self.summary.get(k, 0) for k in ("rows", "ok", "failed", "invalid")},
            "unchanged": self.summary.get("unchanged", 0),
            "valid": self.summary.get("valid", 0),
            "results": self.summary.get("results"),
        }


@dataclass
class JobSummary:
    job: Path
    steps: list[StepResult]
    dry_run: bool = False
    elapsed: float = 0.0

    @property
    def exit_code(self) -> int:
        """A stopped step's code (2 or 3); else 1 if any row failed or was invalid; else 0."""
        codes = [r.exit_code for r in self.steps if r.exit_code is not None]
        stopped = [c for c in codes if c >= 2]
        return stopped[0] if stopped else max(codes, default=0)

    def as_dict(self) -> dict[str, Any]:
        return {
            "job": str(self.job),
            "dry_run": self.dry_run,
            "elapsed_seconds": round(self.elapsed, 3),
            "steps": [r.as_dict() for r in self.steps],
            "exit_code": self.exit_code,
        }


def load_job(
    path: Path, *, base_url: str | None = None, dry_run: bool = False, yes: bool = False
) -> Job:
    """Read and check a job file: its keys, its steps' mappings and options (not yet their
    inputs: see check_job). `yes`: every step may send what cannot be undone (--yes). Raises
    UsageError naming the file, the line and the key."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{path}: no such job file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read the job file: {exc}") from None
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not a valid TOML file: {exc}") from None
    where = _Where(path, text)
    _check_keys(table, JOB_KEYS, where, "job")
    steps = table.get("steps")
    if not steps:
        raise where.error("steps", "no steps: add one [[steps]] table per input (name, input...)")
    folder = path.parent
    results_dir = folder / table.get("results_dir", f"{path.stem}-results")
    state_dir = folder / table["state_dir"] if "state_dir" in table else None
    shared = {k: v for k, v in table.items() if k in SEND_KEYS}
    built: list[Step] = []
    for number, spec in enumerate(steps, start=1):
        if not isinstance(spec, dict):
            raise where.error("steps", "each step is a table: [[steps]]")
        name = spec.get("name", "")
        label = f"step {number}" + (f" ({name})" if name else "")
        # Messages name the line in this step's table, not the first step's with the same key.
        in_step = where.step(number, len(steps))
        _check_keys(spec, {**STEP_KEYS, **dict.fromkeys(MAPPING_KEYS, (object,))}, in_step, label)
        for required in ("name", "input"):
            if required not in spec:
                raise UsageError(f"{path}: {label}: no {required!r}; every step needs one")
        if not _STEP_NAME.fullmatch(name):
            raise in_step.error("name", f"{name!r}: a step's name is letters, digits, . _ -")
        if name in (s.name for s in built):
            raise in_step.error("name", f"two steps are named {name!r}")
        built.append(
            _step(
                spec,
                {**shared, **{k: spec[k] for k in SEND_KEYS if k in spec}},
                in_step,
                results_dir,
                state_dir,
                base_url,
                dry_run,
                yes,
            )
        )
    return Job(path, tuple(built), results_dir)


@dataclass(frozen=True)
class _Where:
    """The job file, to name a key's line in messages."""

    path: Path
    text: str

    def error(self, key: str, message: str, label: str = "") -> UsageError:
        line = mappings.line_of(self.text, key)
        at = f" line {line}" if line else ""
        return UsageError(f"{self.path}{at}: {f'{label}: ' if label else ''}{key}: {message}")

    def step(self, number: int, count: int) -> _Where:
        """The file with only the lines of its `number`th [[steps]] table left (the others
        blanked, so line numbers stay the file's): every step has a `name`, most a `kind`, and
        a key's line must be found in the step it belongs to. Steps written another way (an
        inline array) keep the whole text."""
        lines = self.text.splitlines()
        starts = [i for i, line in enumerate(lines) if _STEP_HEADER.match(line)]
        if len(starts) != count:
            return self
        first, end = starts[number - 1], (starts[number:] or [len(lines)])[0]
        kept = ["" if not first <= i < end else line for i, line in enumerate(lines)]
        return _Where(self.path, "\n".join(kept))


def _check_keys(
    table: Mapping[str, Any], keys: Mapping[str, tuple[type, ...]], where: _Where, label: str
) -> None:
    for key, value in table.items():
        if key in ("site_id", "api_key", "credentials"):
            raise where.error(
                key,
                "credentials stay in the environment (CUSTOMERIO_SITE_ID and"
                " CUSTOMERIO_API_KEY), never in a file",
                label,
            )
        if key not in keys:
            close = difflib.get_close_matches(key, list(keys), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise where.error(key, f"unknown key; {hint}known: {', '.join(keys)}", label)
        types = keys[key]
        if object not in types and (type(value) not in types):
            expected = " or ".join(t.__name__ for t in types).replace("str", "string")
            raise where.error(key, f"must be a {expected}, not {value!r}", label)


def _step(
    spec: Mapping[str, Any],
    send: Mapping[str, Any],
    where: _Where,
    results_dir: Path,
    state_dir: Path | None,
    base_url: str | None,
    dry_run: bool,
    yes: bool,
) -> Step:
    name, folder = spec["name"], where.path.parent
    label = f"step {name}"
    if "mapping" in spec and "preset" in spec:
        raise where.error("preset", "give a step a mapping or a preset, not both", label)
    if spec.get("state") is True and state_dir is None:
        # Else silently no state: the step would send every row, every night.
        raise where.error("state", "state = true needs a state_dir in the job", label)
    base: mappings.ColumnMapping | None = None
    if "mapping" in spec:
        mapping_path = folder / spec["mapping"]
        if not mapping_path.is_file():
            # Relative to the job file's folder, which the user may not expect: say where.
            raise where.error("mapping", f"{mapping_path}: no such mapping file", label)
        try:
            base = mappings.load(mapping_path)
        except UsageError as exc:  # names the mapping file's line; say which step uses it
            raise UsageError(f"{where.path}: {label}: {exc}") from None
    elif "preset" in spec:
        if spec["preset"] not in mappings.PRESETS:
            raise where.error(
                "preset", f"{spec['preset']!r}: one of {', '.join(mappings.PRESETS)}", label
            )
        base = mappings.preset(spec["preset"])
    inline = {k: v for k, v in spec.items() if k in MAPPING_KEYS}
    step_mapping = mappings.from_table(inline, f"{where.path} ({label})", where.text)
    column_mapping = base.under(step_mapping) if base else step_mapping
    source = column_mapping.source
    input_path = str(folder / spec["input"])
    try:
        settings: dict[str, Any] = {k: v for k, v in send.items() if k != "grace"}
        if "rate" in settings:  # 0 removes the cap, as sync's --rate 0 does
            settings["rate"] = float(settings["rate"]) or None
        send_options = SendOptions(**settings, base_url=base_url)
        options = SyncOptions(
            source=SourceOptions(
                format=source.get("format"),  # type: ignore[arg-type]
                encoding=source.get("encoding", "utf-8"),
                delimiter=source.get("delimiter"),
            ),
            normalize=mappings.normalize_options(column_mapping, {}),
            send=send_options,
            results=results_dir / f"{name}{'.dry-run' if dry_run else '.results'}.jsonl",
            dry_run=dry_run,
            grace=float(send.get("grace", 10.0)),
            state=state_dir / f"{name}.state.sqlite"
            if state_dir is not None and spec.get("state", True)
            else None,
            yes=spec.get("yes", False) or yes,
            missing=spec.get("missing", "keep"),
            max_missing=spec.get("max_missing", "5%"),
        )
    except UsageError as exc:
        raise UsageError(f"{where.path}: {label}: {exc}") from None
    return Step(name, input_path, options)


def check_job(job: Job, *, yes: bool = False) -> None:
    """Check every step's input against its mapping (the header, and the first rows), and that
    an irreversible step may send: before anything is sent, as a run of one sync would."""
    if not all(step.options.dry_run for step in job.steps):
        # Each step's sync reads them too, but only when the step starts: a job must not stop
        # at step 1 (recorded as started) for what can be known now.
        Credentials.from_env()
    for step in job.steps:
        if not Path(step.input).is_file():
            raise UsageError(f"{job.path}: step {step.name}: input {step.input}: no such file")
        try:
            plan = check_input(step.input, step.options)
        except UsageError as exc:
            raise UsageError(f"{job.path}: step {step.name}: {exc}") from None
        if plan.kind.irreversible and not (yes or step.options.yes or step.options.dry_run):
            raise UsageError(
                f"{job.path}: step {step.name}: --kind {plan.kind.name} cannot be undone; nothing"
                " was sent. Check the job with --dry-run, then add yes = true to the step (or"
                " pass --yes)"
            )


def run_job(
    job: Job,
    *,
    fresh: bool = False,
    yes: bool = False,
    progress: Callable[[Step], contextlib.AbstractContextManager[Progress]] | None = None,
    stop: StopHandle | None = None,
    on_step: Callable[[StepResult], None] | None = None,
) -> JobSummary:
    """Check the job, then run its steps in order, resuming an unfinished run of it (unless
    `fresh`); stop at the first step that stops (exit 2 or 3). `progress(step)` gives each
    step's progress sink; `on_step` hears each step's result as it is known."""
    started = time.monotonic()
    dry_run = any(step.options.dry_run for step in job.steps)
    check_job(job, yes=yes)
    for folder in {step.options.state.parent for step in job.steps if step.options.state}:
        _make_folder(folder, "state folder")
    results: list[StepResult] = []
    with _Record(job.results_dir, job.path, enabled=not dry_run, fresh=fresh) as record:
        for step in job.steps:
            if step.name in record.finished_steps:
                _check_same_input(job, step, record.finished_steps[step.name])
        for step in job.steps:
            done = record.finished_steps.get(step.name)
            if done is not None:  # finished in the run of the job this one resumes
                result = StepResult(step, "resumed", done, done.get("exit_code"))
            else:
                # A step started in the run being resumed resumes its results file; one not
                # started yet starts over (its results file is an earlier night's).
                fresh_step = step.name not in record.started_steps
                options = replace(step.options, fresh=fresh_step, yes=step.options.yes or yes)
                if fresh_step:
                    # Removed before the record says the step started: a run stopped between
                    # the two (Ctrl-C, kill -9, a bad input) would otherwise leave the record
                    # pointing at the earlier night's file, resumed next time ("belongs to
                    # another input", or its rows taken as sent tonight).
                    record.discard(options.results)
                record.start(step.name)
                result = _run_step(step, options, progress, stop)
                record.step(result)
            results.append(result)
            if on_step:
                on_step(result)
            if result.exit_code is not None and result.exit_code >= 2:
                break
        else:
            record.finish()
    results += [StepResult(step, "not run") for step in job.steps[len(results) :]]
    return JobSummary(job.path, results, dry_run, time.monotonic() - started)


def _check_same_input(job: Job, step: Step, done: Mapping[str, Any]) -> None:
    """A step finished in the run being resumed is not run again: refuse if its input is no
    longer the file it finished with. Resuming a job stopped last night (an outage) with
    tonight's files would show that step "resumed" and never send tonight's file."""
    then = done.get("input")
    if not isinstance(then, dict):
        return  # nothing to compare with
    now = InputIdentity.of(step.input)
    if (now.size, now.sha256) != (then.get("size"), then.get("sha256")):
        raise UsageError(
            f"{job.path}: step {step.name} finished in the unfinished run of the job this one"
            f" would resume, but its input {step.input} has changed since (another night's"
            " file?). Nothing was sent. Pass --fresh to start the job over with today's files,"
            " or put back the file it ran with to resume"
        )


def _make_folder(folder: Path, what: str) -> None:
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)  # its files hold personal data
    except OSError as exc:
        raise UsageError(f"cannot create the {what} {folder}: {exc.strerror}") from None


def _run_step(
    step: Step,
    options: SyncOptions,
    progress: Callable[[Step], contextlib.AbstractContextManager[Progress]] | None,
    stop: StopHandle | None,
) -> StepResult:
    sink = progress(step) if progress else contextlib.nullcontext(None)
    try:
        with sink as on_row:
            summary: Summary = sync(step.input, options, progress=on_row, stop=stop)
    except BulksyncError as exc:
        return StepResult(step, "stopped", exit_code=exc.exit_code, error=str(exc))
    status = "stopped" if summary.interrupted else "done"
    return StepResult(step, status, summary.as_dict(), summary.exit_code)


def _fingerprint(results: object) -> dict[str, Any] | None:
    """The size and SHA-256 of the input a finished step's results file was written for."""
    if not isinstance(results, str):
        return None
    try:
        header = read_header(Path(results))
    except UsageError:
        return None
    return {"size": header.get("size"), "sha256": header.get("sha256")}


class _Record:
    """The job's record in RESULTS_DIR/job.json: the steps started and finished in its latest
    run, so that the same command resumes it. Locked for the run: two runs of one job (an
    overlapping cron) would send the same rows twice. Written whole and renamed into place, so
    a kill at any moment leaves the previous record or the new one."""

    def __init__(self, folder: Path, job: Path, *, enabled: bool, fresh: bool = False) -> None:
        self.folder, self.job, self.enabled, self.fresh = folder, job, enabled, fresh
        self.path = folder / RECORD_NAME
        self.started_steps: list[str] = []
        self.finished_steps: dict[str, dict[str, Any]] = {}
        self._lock: int | None = None

    def __enter__(self) -> _Record:
        _make_folder(self.folder, "results folder")
        if not self.enabled:  # a dry run neither resumes nor counts as a run of the job
            return self
        self._lock = take_lock(self.path, f"{self.job} is being run by another bulksync")
        try:
            data = self._read()
            other = data.get("job")
            if other is not None and other != str(self.job.resolve()):
                # Each job would start the other over, and remove its results files.
                raise UsageError(
                    f"{self.folder} holds the results of another job ({other}); give each job"
                    " its own results_dir"
                )
            if data.get("finished_at") is None and other is not None and not self.fresh:
                self.started_steps = list(data.get("started", []))
                self.finished_steps = dict(data.get("finished", {}))
            else:
                self.begin()
        except BaseException:
            # __exit__ is not called when __enter__ raises: a library caller's next run in
            # this process would find the job "being run by another bulksync" (itself).
            os.close(self._lock)
            self._lock = None
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._lock is not None:
            os.close(self._lock)

    def _read(self) -> dict[str, Any]:
        try:
            data = orjson.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, orjson.JSONDecodeError) as exc:
            if self.fresh:  # what a damaged record is told to pass
                return {}
            raise UsageError(
                f"{self.path}: cannot read the job's record ({exc}); pass --fresh to start the"
                " job over"
            ) from None
        return data if isinstance(data, dict) else {}

    def begin(self) -> None:
        self.started_steps, self.finished_steps = [], {}
        self._write(None)

    def discard(self, results: Path | None) -> None:
        """Remove a results file of an earlier run of the job (under its lock: never one that
        another bulksync is writing)."""
        if not self.enabled or results is None:
            return
        check_output(results, "results file")  # a directory there: sync's message, exit 2
        lock = take_lock(results, f"{results} is in use by another bulksync run")
        try:
            results.unlink(missing_ok=True)
        except OSError as exc:
            raise OutputError.of(exc, results, "results file") from None
        finally:
            os.close(lock)

    def start(self, name: str) -> None:
        if name not in self.started_steps:
            self.started_steps.append(name)
        self._write(None)

    def step(self, result: StepResult) -> None:
        if result.exit_code is not None and result.exit_code < 2:
            self.finished_steps[result.step.name] = {
                **result.summary,
                "exit_code": result.exit_code,
                "input": _fingerprint(result.summary.get("results")),
            }
        self._write(None)

    def finish(self) -> None:
        self._write(time.time())

    def _write(self, finished_at: float | None) -> None:
        if not self.enabled:
            return
        record = {
            "job": str(self.job.resolve()),
            "started": self.started_steps,
            "finished": self.finished_steps,
            "finished_at": finished_at,
        }
        temporary = self.path.with_name(self.path.name + ".new")
        try:
            with os.fdopen(
                open_private(temporary, os.O_WRONLY | os.O_TRUNC, "job record"), "wb"
            ) as f:
                f.write(orjson.dumps(record, option=orjson.OPT_INDENT_2))
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, self.path)
        except OSError as exc:
            raise OutputError.of(exc, self.path, "job record") from None
