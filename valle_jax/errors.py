"""The exception types for faults a user can fix, and the exit codes they end a command with.

Raise `UserError("what is wrong; what to do")` for anything a user can fix (bad flag, missing
file, wrong codec, empty text). The CLI prints its message as one line and exits with its
`exit_code` (2), without a traceback. `StorageError` is a failed write (a full disk, a
read-only folder) in the middle of the work: exit code 74 (EX_IOERR). Programming errors
stay ordinary exceptions with tracebacks. A run stopped by a signal after saving exits with
`EXIT_STOPPED` (75, EX_TEMPFAIL: requeue to resume).
"""
import errno
import os

EXIT_STOPPED = 75   # EX_TEMPFAIL (sysexits.h): saved and stopped on SIGTERM/SIGINT; requeue to resume


class UserError(Exception):
  """A mistake the user can fix; the message says what is wrong and what to do."""
  exit_code = 2


class StorageError(UserError):
  """Writing a run's output failed (disk full, permissions); nothing was overwritten."""
  exit_code = 74   # EX_IOERR (sysexits.h)


def os_reason(e: BaseException) -> str:
  """A short reason for an I/O failure: the OS's words when there are some."""
  if isinstance(e, OSError) and e.strerror:
    return e.strerror
  text = str(e)
  for code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EROFS, errno.EIO):
    words = os.strerror(code)
    if words in text:
      return words
  first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
  return first if len(first) <= 300 else first[:300] + "..."
