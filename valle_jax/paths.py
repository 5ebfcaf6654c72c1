"""Local and cloud (`gs://`) paths for datasets, workdirs, checkpoints, metrics and outputs.

Every such path goes through `etils.epath.Path`: a local path behaves as with `os` (made
absolute, `~` expanded, renames atomic), a `gs://bucket/...` path is read and written through
gcsfs (`pip install -e .[gcs]`). Orbax (checkpoints, through TensorStore), Grain / ArrayRecord
(reading dataset shards) and tensorboardX (event files) take `gs://` paths themselves.

What differs on `gs://` (objects, not files):
- a rename is a copy and a delete, not atomic (`replace`);
- there is no append: `append_text` rewrites the object with the new lines at its end;
- there are no free-space or permission checks before writing (`is_local` is False): a
  failed write is reported when it happens.
"""
from __future__ import annotations

import os

from etils import epath

from valle_jax.errors import UserError


def is_local(path: str | os.PathLike) -> bool:
  """Whether `path` is on this machine's file system (not `gs://...` or another URI)."""
  return "://" not in os.fspath(path)


def absolute(path: str | os.PathLike) -> str:
  """`path` made absolute (`~` expanded) when local; a `gs://` path as given (without a
  trailing slash). A `gs://` path without gcsfs installed is a `UserError`."""
  path = os.fspath(path)
  if is_local(path):
    return os.path.abspath(os.path.expanduser(path))
  if path.startswith("gs://"):
    try:
      import gcsfs  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    except ImportError:
      raise UserError(f"{path}: gs:// paths need gcsfs; `pip install -e .[gcs]`.") from None
  return os.fspath(epath.Path(path))


def path(p: str | os.PathLike) -> epath.Path:
  """`p` as an `epath.Path` (absolute when local)."""
  return epath.Path(absolute(p))


def replace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
  """Moves `src` onto `dst` (atomically when local: `os.replace`)."""
  if is_local(src) and is_local(dst):
    os.replace(src, dst)
  else:
    path(src).replace(path(dst))


def append_text(p: str | os.PathLike, text: str) -> None:
  """Appends `text` to the file `p` (made if missing); on `gs://` the object is rewritten."""
  if is_local(p):
    with open(p, "a", encoding="utf-8") as f:
      f.write(text)
    return
  target = path(p)
  target.write_text((target.read_text(encoding="utf-8") if target.exists() else "") + text,
                    encoding="utf-8")
