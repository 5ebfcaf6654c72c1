"""`valle-jax train`: train the AR and/or NAR model of a config on a prepared dataset.

    valle-jax train --config=configs/paper.py --config.data.dataset=DATA --workdir=runs/x
    valle-jax train --config=configs/tiny.py --config.train.model=ar \\
        --config.data.dataset=DATA --workdir=runs/ar

Re-running with the same --workdir resumes from its latest checkpoint, data position
included, with the saved config: only the fields --allow_config_change names, and those it
always allows (below), may change. One run at a time per workdir.

Exit codes: 0 the run reached train.steps; 75 (EX_TEMPFAIL) it saved and stopped on
SIGTERM/SIGINT, requeue it to resume; 74 (EX_IOERR) a write failed (a full disk); 2 a user
error; 128 + N a second signal N ended it at once.

The training itself is valle_jax/train.py's `train(cfg, workdir)`.
"""
from __future__ import annotations

import os
import sys
import threading

import jax
from absl import flags
from ml_collections import config_flags

from valle_jax import paths, run_guard, train
from valle_jax.errors import EXIT_STOPPED, StorageError, UserError

EXIT_WATCHDOG_S = 60.0

_CONFIG = config_flags.DEFINE_config_file("config", "configs/tiny.py", "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, logs). Re-using "
                               "it resumes the run.")
_ALLOW_CHANGE = flags.DEFINE_list(
    "allow_config_change", [], "Config fields (or sections, e.g. optim) a resumed run may "
    "change from the saved config, comma-separated. Always allowed: "
    f"{', '.join(run_guard.RESUMABLE_BY_DEFAULT)}.")


def _exit_watchdog(code: int):
  """Ends the process with `code` if it has not exited `EXIT_WATCHDOG_S` seconds from now
  (a library thread that never finishes must not keep a stopped run alive)."""
  timer = threading.Timer(EXIT_WATCHDOG_S, os._exit, (code,))
  timer.daemon = True
  timer.start()


def main(argv):
  """Runs `train.train` on the flags; exits with the codes in the module docstring."""
  del argv
  if not _WORKDIR.value:
    raise UserError("--workdir is required (where checkpoints and logs go).")
  try:
    summary = train.train(_CONFIG.value, _WORKDIR.value, _ALLOW_CHANGE.value)
  except StorageError as e:
    _exit_watchdog(e.exit_code)
    raise
  checkpoints = paths.path(paths.absolute(_WORKDIR.value)) / "checkpoints"
  if summary["stopped"]:
    _exit_watchdog(EXIT_STOPPED)
    if jax.process_index() == 0:
      print(f"[train] stopped at step {summary['step']} of {_CONFIG.value.train.steps} "
            f"({summary['stopped']}): requeue to resume; checkpoints in "
            f"{checkpoints}", file=sys.stderr)
    sys.exit(EXIT_STOPPED)
  if jax.process_index() == 0:
    print(f"[train] done at step {summary['step']}; checkpoints in "
          f"{checkpoints}", file=sys.stderr)
