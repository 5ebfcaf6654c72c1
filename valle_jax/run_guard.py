"""What keeps two runs, or two configs, off one training workdir.

- `WorkdirLock`: `<workdir>/train.lock` holds the host, pid and start time of the run using
  the workdir; a second run is refused while that process lives. A lock whose process is gone
  (same host, pid not running: a run killed with -9) is stale and taken over, with a line
  saying so; a lock from another host is only reported (its process cannot be checked from
  here), with what to do if that run is gone. On `gs://` the lock is an object written after
  checking that none exists: not atomic (two runs started within the same second could both
  take it), which is enough to stop a second run started later by mistake.
- `check_resume_config`: a run resumed from a workdir must have the config its checkpoints
  were saved with. Fields that only say how long to train and how often to log, evaluate and
  save (`RESUMABLE_BY_DEFAULT`) may change; any other field only when named in
  `--allow_config_change` (a field, or a section such as `optim`); model shapes, `variant`
  and `train.model` never (the saved parameters have the old ones).
"""
from __future__ import annotations

import datetime
import json
import os
import socket
from typing import Any, Sequence

from valle_jax import paths
from valle_jax.errors import UserError

LOCK_FILE = "train.lock"

# Fields a resumed run may change without being asked: the length of the run, how often it
# logs, evaluates and saves, where its data lives and how it is read and laid out on devices,
# and how the same function is computed (the attention implementation, rematerialisation).
RESUMABLE_BY_DEFAULT = (
    "train.steps", "train.log_every", "train.eval_every", "train.eval_batches",
    "train.nan_max_consecutive", "checkpoint", "data.dataset", "data.eval_split",
    "data.num_threads", "data.prefetch", "data.device_prefetch", "mesh", "distributed", "debug",
    "model.attention", "model.remat")
# Fields no resumed run may change: the saved parameters' shapes depend on them (the
# variant's recipe gives the model classes).
NEVER_ON_RESUME = ("variant", "model", "train.model")
CHANGEABLE_MODEL_FIELDS = ("model.dropout", "model.compute_dtype", "model.attention",
                           "model.remat")


class WorkdirLock:
  """An exclusive lock file on a training workdir (see the module docstring)."""

  def __init__(self, workdir: str, log=print):
    self.path = os.path.join(workdir, LOCK_FILE)
    self.log = log
    self.held = False

  def acquire(self) -> "WorkdirLock":
    me = {"host": socket.gethostname(), "pid": os.getpid(),
          "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    for _ in range(2):
      try:
        fd = self._create()
      except FileExistsError:
        holder = self._holder()
        if not self._is_stale(holder, me["host"]):
          raise UserError(self._busy(holder, me["host"])) from None
        self.log(f"[train] taking over the stale lock {self.path} of pid {holder.get('pid')} "
                 f"on {holder.get('host')} (started {holder.get('started')}), which is no "
                 "longer running.", flush=True)
        try:
          paths.path(self.path).unlink()
        except FileNotFoundError:
          pass
        continue
      except OSError as e:
        raise UserError(f"cannot create the lock file {self.path}: {e.strerror}; check that "
                        "the workdir is writable.") from None
      with (os.fdopen(fd, "w", encoding="utf-8") if fd is not None
            else paths.path(self.path).open("w", encoding="utf-8")) as f:
        json.dump(me, f)
      self.held = True
      return self
    raise UserError(f"another run took the lock {self.path} at the same time; rerun.")

  def _create(self) -> int | None:
    """Creates the lock file if there is none (else `FileExistsError`): an open descriptor
    when local (exclusive create), None on `gs://` (written by the caller)."""
    if paths.is_local(self.path):
      return os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    if paths.path(self.path).exists():
      raise FileExistsError(self.path)
    return None

  def release(self) -> None:
    if self.held:
      self.held = False
      if self._holder().get("pid") == os.getpid():
        paths.path(self.path).unlink()

  def _holder(self) -> dict[str, Any]:
    try:
      with paths.path(self.path).open(encoding="utf-8") as f:
        holder = json.load(f)
      return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
      return {}     # unreadable or half-written: no live holder can be named

  @staticmethod
  def _is_stale(holder: dict[str, Any], host: str) -> bool:
    pid = holder.get("pid")
    if holder.get("host") != host or not isinstance(pid, int):
      return not holder    # from another host: its process cannot be checked here
    if pid == os.getpid():
      return True
    try:
      os.kill(pid, 0)
    except ProcessLookupError:
      return True
    except PermissionError:
      return False
    return False

  def _busy(self, holder: dict[str, Any], host: str) -> str:
    who = (f"pid {holder.get('pid')} on {holder.get('host')}, started "
           f"{holder.get('started')}")
    if holder.get("host") == host:
      return (f"another training run ({who}) is using {os.path.dirname(self.path)}; wait "
              "for it to end, stop it, or pass another --workdir.")
    return (f"{os.path.dirname(self.path)} is locked by a run on another host ({who}); if "
            f"that run has ended, delete {self.path} and rerun.")


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict):
    out = {}
    for key, value in tree.items():
      out.update(_flatten(value, f"{prefix}{key}."))
    return out
  return {prefix[:-1]: tree}


def _covered(field: str, names: Sequence[str]) -> bool:
  return any(field == n or field.startswith(n + ".") for n in names)


def check_resume_config(saved: dict[str, Any], config, allow: Sequence[str], workdir: str,
                        step: int, log=print) -> None:
  """Refuses (`UserError`) a resumed run whose config differs from the saved one in fields
  not allowed to change; prints the allowed changes."""
  old = _flatten(saved)
  new = _flatten(json.loads(config.to_json()))
  unknown = [n for n in allow if not any(_covered(k, [n]) for k in {**old, **new})]
  if unknown:
    raise UserError(f"--allow_config_change names {', '.join(map(repr, unknown))}, not a "
                    "config field or section (e.g. optim.peak_lr, or optim).")
  missing = object()
  # A run saved by an older valle-jax: a field added since counts as unchanged when it has
  # its default (the behaviour the run had); a field removed since is ignored (it cannot be
  # honoured; if its model had extra parameters, restoring them fails with its own message).
  from configs.base import base  # pylint: disable=g-import-not-at-top
  defaults = _flatten(json.loads(base().to_json()))
  removed = sorted(k for k in set(old) - set(new) if k not in defaults)
  old = {k: v for k, v in old.items() if k not in removed}
  old.update({k: defaults[k] for k in set(new) - set(old) if k in defaults})
  changes = {k: (old.get(k, missing), new.get(k, missing))
             for k in sorted(set(old) | set(new)) if old.get(k, missing) != new.get(k, missing)}
  if removed:
    log(f"[train] ignoring fields of the saved config that valle-jax no longer has: "
        f"{', '.join(removed)}", flush=True)

  def show(field):
    a, b = changes[field]
    a = "(absent)" if a is missing else json.dumps(a)
    b = "(absent)" if b is missing else json.dumps(b)
    return f"{field} {a} -> {b}"

  fixed = [k for k in changes if _covered(k, NEVER_ON_RESUME)
           and not _covered(k, CHANGEABLE_MODEL_FIELDS)]
  refused = [k for k in changes if k not in fixed
             and not _covered(k, RESUMABLE_BY_DEFAULT) and not _covered(k, allow)]
  where = f"the checkpoints in {workdir} (step {step})"
  if fixed:
    raise UserError(f"{where} were saved with another model: {'; '.join(map(show, fixed))}. "
                    "A model's shape cannot change on resume; use a new --workdir.")
  if refused:
    raise UserError(f"{where} were saved with another config: {'; '.join(map(show, refused))}."
                    f" Pass --allow_config_change={','.join(refused)} to resume with the new "
                    "values, or a new --workdir to start over.")
  if changes:
    log(f"[train] resuming with a changed config: {'; '.join(map(show, changes))}", flush=True)
