"""The one exception type for user mistakes.

Raise `UserError("what is wrong; what to do")` for anything a user can fix (bad flag, missing
file, wrong codec, empty text). The CLI prints its message as one line and exits with status
2, without a traceback. Programming errors stay ordinary exceptions with tracebacks.
"""


class UserError(Exception):
  """A mistake the user can fix; the message says what is wrong and what to do."""
