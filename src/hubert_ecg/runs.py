"""Run records: what a job was asked to do, and whether an existing output folder may be continued.

Every ``pretrain``, ``finetune``, ``features``, ``cluster`` and ``label`` output folder gets a
``run.json``::

    {"format": "hubert-ecg-run", "version": 1, "kind": "finetune",
     "settings": {"run": {...}, "train": {...}, "finetune": {...}},   # every option after defaults
     "command": ["hubert-ecg", "finetune", ...], "versions": {"hubert_ecg": ..., "torch": ..., ...},
     "git_commit": "..." | null, "inputs": {"store": {"path", "manifest_sha256", "rows"}, "init": {...}},
     "created": "2026-12-02T07:00:00+00:00", "invocations": [{"at", "command", "action", "changes"}]}

Re-running into a folder that holds a ``run.json`` (:func:`begin_run`):

* identical settings: continue (``resume``) -- the training loop prints "resuming from step N of M",
  or says the run is finished;
* different settings: refused with a one-line diff (:class:`RunSettingsError`), unless
  ``overwrite`` (the old folder is moved aside to ``NAME.old-YYYYmmdd-HHMMSS``, never deleted) or
  ``resume`` and every change is in :data:`SAFE_RESUME_CHANGES`.

``settings`` is nested plain data (dataclasses are serialised with :func:`to_jsonable`); comparison is
on dotted keys (``train.lr``). ``run.json`` can be given back to ``--config`` to replay the run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .atomic import atomic_write_json, printable_path, sha256_file

__all__ = [
    "NOT_COMPARED",
    "RUN_FILE",
    "RunDecision",
    "RunSettingsError",
    "SAFE_RESUME_CHANGES",
    "begin_run",
    "checkpoint_fingerprint",
    "diff_settings",
    "environment",
    "flatten",
    "format_changes",
    "read_run",
    "settings_from_config",
    "store_fingerprint",
    "to_jsonable",
    "write_stage_record",
]

RUN_FILE = "run.json"
_FORMAT = "hubert-ecg-run"

#: Settings that change what is shown, never what is computed: not compared at all.
NOT_COMPARED: frozenset[str] = frozenset({"train.out_dir", "train.progress"})

#: The only changes ``--resume`` accepts on an existing run. Each leaves the steps already taken valid:
#: a longer run (``max_steps``; the linear LR decay is re-sized to the new total from the current step),
#: a different early-stopping patience or validation/checkpoint/log cadence, other loggers, another
#: number of data-loader workers (the sampler, not the workers, fixes the data order). Anything else
#: (learning rate, batch size, task, head, data, seed, ...) would mix two experiments in one folder.
SAFE_RESUME_CHANGES: frozenset[str] = frozenset(
    {
        "train.max_steps",
        "train.patience",
        "train.val_every",
        "train.save_every",
        "train.log_every",
        "train.logger",
        "train.num_workers",
    }
)


_COMMAND: list[str] | None = None


def set_command(argv: Sequence[str] | None) -> None:
    """Record the command line of this process (the CLI calls it; library callers need not); None clears it.

    Arguments that are not valid UTF-8 (a Latin-1 file name) are kept with ``\\xff`` escapes, so that
    ``run.json`` and the model card can always be written.
    """
    global _COMMAND
    _COMMAND = None if argv is None else [printable_path(str(a)) for a in argv]


def current_command() -> list[str]:
    """The command line recorded with :func:`set_command`, else this process's ``sys.argv``."""
    if _COMMAND is not None:
        return list(_COMMAND)
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    return [printable_path(a) for a in [program, *sys.argv[1:]]]


class RunSettingsError(ValueError):
    """An output folder holds a run with other settings (the message gives the diff and the remedies)."""


# ---------------------------------------------------------------------------------------------
# Plain data
# ---------------------------------------------------------------------------------------------
def to_jsonable(obj: Any) -> Any:
    """Dataclasses, tuples, paths and numpy scalars -> JSON data (dict keys as strings)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", None) == 0:
        return obj.item()
    return obj


def flatten(settings: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1e-3}}`` -> ``{"train.lr": 1e-3}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


_MISSING = "<unset>"


def diff_settings(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``[(dotted key, old value, new value)]`` of every compared setting that differs, sorted by key."""
    a, b = flatten(to_jsonable(old)), flatten(to_jsonable(new))
    changes = []
    for key in sorted(set(a) | set(b)):
        if key in NOT_COMPARED:
            continue
        va, vb = a.get(key, _MISSING), b.get(key, _MISSING)
        if va != vb:
            changes.append((key, va, vb))
    return changes


def format_changes(changes: Sequence[tuple[str, Any, Any]]) -> str:
    """One line: ``train.lr 5e-05 -> 0.001, finetune.task multi_label -> binary``."""
    return ", ".join(f"{key} {json.dumps(old)} -> {json.dumps(new)}" for key, old, new in changes)


# ---------------------------------------------------------------------------------------------
# Where a run came from
# ---------------------------------------------------------------------------------------------
def git_commit(start: str | os.PathLike | None = None) -> str | None:
    """The commit of the git checkout holding this package (``+dirty`` when modified), else None.

    Fails soft: no git, not a checkout, a slow file system -- all give None.
    """
    folder = Path(start) if start is not None else Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return None
        commit = head.stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return commit + ("+dirty" if status.returncode == 0 and status.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict[str, Any]:
    """Package, torch, numpy and Python versions, and the platform."""
    from . import __version__

    versions: dict[str, Any] = {
        "hubert_ecg": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    for name in ("torch", "numpy"):
        module = sys.modules.get(name)
        versions[name] = getattr(module, "__version__", None) if module is not None else None
    return versions


def store_fingerprint(store: Any) -> dict[str, Any]:
    """Path, row count and the sha256 of ``manifest.csv`` of an :class:`~hubert_ecg.store.ECGStore`."""
    path = Path(store.path)
    manifest = path / "manifest.csv"
    return {
        "path": str(path.resolve()),
        "rows": int(len(store)),
        "manifest_sha256": sha256_file(manifest) if manifest.exists() else None,
    }


def checkpoint_fingerprint(reference: str | os.PathLike | None) -> dict[str, Any] | None:
    """What an init checkpoint was: the reference as given and the sha256 of its weights.

    A model folder hashes ``model.safetensors`` (else its one weights file), a file hashes itself; a hub id
    not on disk records ``sha256: null`` (fail soft: the run is still recorded).
    """
    if reference is None:
        return None
    path = Path(str(reference)).expanduser()
    digest = None
    try:
        if path.is_dir():
            for name in ("model.safetensors", "pytorch_model.bin", "model.pt"):
                if (path / name).is_file():
                    digest = sha256_file(path / name)
                    break
        elif path.is_file():
            digest = sha256_file(path)
    except OSError:
        digest = None
    return {"reference": str(reference), "path": str(path.resolve()) if path.exists() else None, "sha256": digest}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def read_run(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The ``run.json`` of a folder, or None when it has none. A broken one is an error naming the file."""
    path = Path(folder) / RUN_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise RunSettingsError(f"{path}: unreadable run record ({err}); move it away or use --overwrite") from None
    if not isinstance(data, dict) or data.get("format") != _FORMAT or not isinstance(data.get("settings"), dict):
        raise RunSettingsError(f"{path}: not a hubert-ecg run record; move it away or use --overwrite")
    return data


# ---------------------------------------------------------------------------------------------
# The decision
# ---------------------------------------------------------------------------------------------
@dataclass
class RunDecision:
    """What :func:`begin_run` decided: ``new``, ``resume`` or ``overwrite`` (a new run after moving the old)."""

    action: str
    changes: list[tuple[str, Any, Any]] = field(default_factory=list)  # accepted (safe) changes on resume
    moved_to: Path | None = None


def _move_aside(run_dir: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = run_dir.with_name(f"{run_dir.name}.old-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = run_dir.with_name(f"{run_dir.name}.old-{stamp}-{n}")
    os.replace(run_dir, target)
    return target


def _has_content(run_dir: Path) -> bool:
    return run_dir.is_dir() and any(run_dir.iterdir())


def _input_fingerprints(inputs: Mapping[str, Any] | None) -> dict[str, Any]:
    """The checked part of ``inputs``: every checksum and row count (paths may move, content may not)."""
    flat = flatten(to_jsonable(dict(inputs or {})), "inputs.")
    return {k: v for k, v in flat.items() if k.endswith(("sha256", ".rows"))}


def decide(
    run_dir: Path,
    kind: str,
    settings: Mapping[str, Any],
    *,
    overwrite: bool = False,
    resume: bool = False,
    inputs: Mapping[str, Any] | None = None,
) -> RunDecision:
    """Compare ``settings`` (and the data/checkpoint fingerprints in ``inputs``) with the folder's ``run.json``.

    Raises :class:`RunSettingsError` when refused. Pure: touches nothing on disk (:func:`begin_run`
    moves and writes). Changed inputs (another store content, another init checkpoint) are never safe.
    """
    if overwrite and resume:
        raise RunSettingsError("--overwrite and --resume contradict each other: give one")
    if overwrite:
        return RunDecision("overwrite" if _has_content(run_dir) else "new")
    previous = read_run(run_dir)
    if previous is None:
        # A folder from a version without run records: its settings cannot be checked, the loop resumes it.
        return RunDecision("resume" if (run_dir / "last").exists() else "new")
    if previous.get("kind") != kind:
        raise RunSettingsError(
            f"{run_dir}: holds a {previous.get('kind')} run, not {kind}; use another "
            "output folder, or --overwrite to start over (the old run is moved aside)"
        )
    changes = diff_settings(previous["settings"], settings)
    if inputs is not None and previous.get("inputs"):
        changes += diff_settings(_input_fingerprints(previous["inputs"]), _input_fingerprints(inputs))
    if not changes:
        return RunDecision("resume")
    unsafe = [c for c in changes if c[0] not in SAFE_RESUME_CHANGES]
    if not resume:
        raise RunSettingsError(
            f"{run_dir}: holds a run with other settings ({format_changes(changes)}); use another output folder, "
            "--overwrite to start over (the old run is moved aside), or --resume to continue with safe changes"
        )
    if unsafe:
        allowed = ", ".join(sorted(k.split(".", 1)[1] for k in SAFE_RESUME_CHANGES))
        raise RunSettingsError(
            f"{run_dir}: --resume accepts changes to {allowed} only; refused: {format_changes(unsafe)} "
            "(use another output folder, or --overwrite to start over)"
        )
    return RunDecision("resume", changes)


def begin_run(
    out_dir: str | os.PathLike,
    kind: str,
    settings: Mapping[str, Any],
    *,
    overwrite: bool = False,
    resume: bool = False,
    command: Sequence[str] | None = None,
    inputs: Mapping[str, Any] | None = None,
    is_main: bool = True,
) -> RunDecision:
    """Decide what to do with ``out_dir`` (see the module docstring) and write its ``run.json``.

    Only ``is_main`` moves folders and writes (other ranks decide the same way and read only). The
    record keeps the first invocation's ``created`` time and appends every invocation (command,
    action, accepted changes) to ``invocations``.
    """
    run_dir = Path(out_dir)
    decision = decide(run_dir, kind, settings, overwrite=overwrite, resume=resume, inputs=inputs)
    if not is_main:
        return decision
    if decision.action == "overwrite":
        decision.moved_to = _move_aside(run_dir)
        print(f"--overwrite: the previous run in {run_dir} was moved to {decision.moved_to}")
    previous = read_run(run_dir) if decision.action == "resume" else None
    invocation = {
        "at": _now(),
        "command": list(command) if command is not None else current_command(),
        "action": decision.action,
        "changes": [list(c) for c in decision.changes],
    }
    record = {
        "format": _FORMAT,
        "version": 1,
        "kind": kind,
        "settings": to_jsonable(settings),
        "command": invocation["command"],
        "versions": environment(),
        "git_commit": git_commit(),
        "inputs": to_jsonable(dict(inputs or {})),
        "created": previous.get("created", invocation["at"]) if previous else invocation["at"],
        "invocations": (previous.get("invocations", []) if previous else []) + [invocation],
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / RUN_FILE, record)
    return decision


def begin_training_run(
    out_dir: str | os.PathLike,
    device: str,
    kind: str,
    settings: Mapping[str, Any],
    *,
    store: Any,
    init: str | os.PathLike | None = None,
    extra_inputs: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    resume: bool = False,
    command: Sequence[str] | None = None,
) -> RunDecision:
    """:func:`begin_run` for ``pretrain`` / ``finetune``: fingerprints the store and the init checkpoint.

    Under torchrun every rank decides alike; rank 0 moves and writes, then all ranks meet at a barrier.
    """
    from .distributed import barrier, init_distributed

    env = init_distributed(device)
    inputs = {"store": store_fingerprint(store), "init": checkpoint_fingerprint(init), **dict(extra_inputs or {})}
    decision = begin_run(
        out_dir, kind, settings, overwrite=overwrite, resume=resume, command=command, inputs=inputs, is_main=env.is_main
    )
    barrier(env)
    return decision


def write_stage_record(
    path: str | os.PathLike,
    kind: str,
    settings: Mapping[str, Any],
    *,
    command: Sequence[str] | None = None,
    inputs: Mapping[str, Any] | None = None,
) -> Path:
    """The ``run.json`` of a pre-training stage (``features``, ``cluster``, ``label``).

    Those stages check their own plans on resume (a different plan is refused by the stage); this record
    says what produced the outputs. ``path`` is a folder (``run.json`` inside) or a ``.json`` file.
    Earlier invocations with other settings are kept under ``earlier``.
    """
    target = Path(path)
    if target.suffix != ".json":
        target = target / RUN_FILE
    previous = read_run(target.parent) if target.name == RUN_FILE else None
    if previous is None and target.exists():
        try:
            previous = json.loads(target.read_text())
        except (OSError, ValueError):
            previous = None
    now = _now()
    record = {
        "format": _FORMAT,
        "version": 1,
        "kind": kind,
        "settings": to_jsonable(settings),
        "command": list(command) if command is not None else current_command(),
        "versions": environment(),
        "git_commit": git_commit(),
        "inputs": to_jsonable(dict(inputs or {})),
        "created": now,
    }
    if previous and previous.get("settings") is not None:
        earlier = list(previous.get("earlier", []))
        if diff_settings(previous["settings"], record["settings"]):
            earlier.append({k: previous.get(k) for k in ("settings", "command", "created")})
        else:
            record["created"] = previous.get("created", now)
        if earlier:
            record["earlier"] = earlier
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(target, record)
    return target


# ---------------------------------------------------------------------------------------------
# Replaying a configuration
# ---------------------------------------------------------------------------------------------
def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """A ``--config`` file (JSON or YAML): a ``run.json`` or its ``settings`` mapping, as the settings."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise RunSettingsError(f"{path}: cannot read the config ({err.strerror or err})") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as err:
            raise RunSettingsError(f"{path}: not valid JSON ({err})") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise RunSettingsError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise RunSettingsError(f'{path}: a config must be a mapping (a run.json or its "settings")')
    return dict(data["settings"]) if isinstance(data.get("settings"), dict) else data


def settings_from_config(section: str, cls: type, data: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Keyword arguments for dataclass ``cls`` from ``data[section]``; unknown keys are a one-line error."""
    values = data.get(section, {})
    if not isinstance(values, Mapping):
        raise RunSettingsError(f"{source}: section {section!r} must be a mapping")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise RunSettingsError(
            f"{source}: unknown {section} setting(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})"
        )
    return dict(values)
