"""One error path for a command's files: checked before the work, each fault one line.

`output_dir` / `output_file`: an output that is a folder where a file is meant (or the other
way round), lies under a file, or cannot be written is a `UserError` before anything is
computed. `input_file` and `text_lines`: an input that is missing, a folder, or not UTF-8.
A `gs://` path (valle_jax/paths.py) is checked for being a folder or a file only: a bucket's
permissions show when it is written.
"""
from __future__ import annotations

import os

from valle_jax import paths
from valle_jax.errors import UserError


def _nearest_existing(path: str) -> str:
  while not os.path.exists(path):
    parent = os.path.dirname(path)
    if parent == path:
      break
    path = parent
  return path


def _writable_place(path: str, flag: str, given: str) -> None:
  """The folder `path` (existing or to be made) can hold new files."""
  existing = _nearest_existing(path)
  if not os.path.isdir(existing):
    raise UserError(f"{flag}={given} lies under the file {existing}, which is not a folder; "
                    "pass another path.")
  if not os.access(existing, os.W_OK | os.X_OK):
    raise UserError(f"{flag}={given}: {existing} is not writable; pass a folder you can "
                    "write to.")


def output_dir(path: str, flag: str) -> str:
  """The absolute folder `path`, checked to be (or become) a writable folder."""
  full = paths.absolute(path)
  if paths.path(full).exists() and not paths.path(full).is_dir():
    raise UserError(f"{flag}={path} is a file; pass a folder.")
  if paths.is_local(full):
    _writable_place(full, flag, path)
  return full


def output_file(path: str, flag: str) -> str:
  """The absolute file `path`, checked to be writable (its folder made later if missing)."""
  full = paths.absolute(path)
  if paths.path(full).is_dir():
    raise UserError(f"{flag}={path} is a folder; pass a file name (e.g. "
                    f"{os.path.join(path, 'out.wav')}).")
  if not paths.is_local(full):
    return full
  if os.path.exists(full) and not os.access(full, os.W_OK):
    raise UserError(f"{flag}={path} exists and is not writable.")
  _writable_place(os.path.dirname(full), flag, path)
  return full


def input_file(path: str, flag: str) -> str:
  """The absolute file `path`, checked to exist and be a readable file."""
  full = paths.absolute(path)
  if paths.path(full).is_dir():
    raise UserError(f"{flag}={path} is a folder; pass a file.")
  if not paths.path(full).is_file():
    raise UserError(f"{flag}={path} does not exist.")
  if paths.is_local(full) and not os.access(full, os.R_OK):
    raise UserError(f"{flag}={path} is not readable.")
  return full


def text_lines(path: str, flag: str) -> list[str]:
  """The lines of a UTF-8 text file; a file that is not UTF-8 is one line naming where."""
  full = input_file(path, flag)
  with paths.path(full).open("rb") as f:
    data = f.read()
  try:
    return data.decode("utf-8").splitlines()
  except UnicodeDecodeError as e:
    line = data[:e.start].count(b"\n") + 1
    raise UserError(f"{flag}={path} is not UTF-8 text (line {line}, byte {e.start}); save it "
                    "as UTF-8.") from None
