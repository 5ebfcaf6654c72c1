"""The one `valle-jax` entry point.

    valle-jax <command> [--config=configs/x.py] [--config.a.b=value] [flags...]

Each command lives in its own module, which defines its absl flags at import time and a
`main(argv)` function. Only the chosen command's module is imported, so commands never see
each other's flags and `valle-jax --help` stays fast. Before a command runs, the variants
(valle_jax/variants) are imported, so that a run's config can name one; the core never
imports them.
"""
from __future__ import annotations

import importlib
import sys

# command -> (module, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("valle_jax.info", "build the AR and NAR models of a config, run a forward pass, print sizes"),
    "train": ("valle_jax.train_cli", "train the AR and/or NAR model on a prepared dataset (resumes from --workdir)"),
    "synthesize": ("valle_jax.synthesize_cli", "text + a voice prompt -> speech (zero-shot or --continual; TSV batches)"),
    "evaluate": ("valle_jax.evaluate_cli", "the paper's evaluation of a run on a test list (cross or continual): WER and speaker similarity"),
    "prepare": ("data_prep.prepare", "build a dataset (phonemes + codec codes, ArrayRecord) from a corpus"),
    "demo": ("valle_jax.demo", "VALL-E end to end offline: corpus, codec, data, training, zero-shot samples, evaluation, report.html"),
    "align": ("valle_jax.variants.aligned.align_cli", "phoneme-to-frame forced alignments of a prepared dataset (for the aligned variant)"),
    "import-checkpoint": ("valle_jax.import_checkpoint", "another implementation's VALL-E checkpoint (--format=lifeiteng) -> a run synthesize loads"),
    "index": ("data_prep.index", "write the start-up index of a dataset prepared by an older valle-jax (prepare writes it)"),
    "make-corpus": ("data_prep.make_corpus", "write the built-in synthetic multi-voice corpus (Debian TTS voices, KJV text)"),
}

# Commands that build data and read no run config: they need no variant.
DATA_COMMANDS = ("prepare", "index", "make-corpus")


def _usage() -> str:
  width = max(len(c) for c in COMMANDS)
  lines = ["usage: valle-jax <command> [flags]", "", "commands:"]
  lines += [f"  {name:<{width}}  {desc}" for name, (_, desc) in COMMANDS.items()]
  lines += ["", "Run `valle-jax <command> --help` for a command's flags."]
  return "\n".join(lines)


def _command_help(command: str, module) -> str:
  """The command's docstring and its own flags (not absl's whole set)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  lines = [f"usage: valle-jax {command} [flags]", "", (module.__doc__ or "").strip(), ""]
  own = flags.FLAGS.module_help(module.__name__).strip()
  lines += ["flags:", "\n".join(own.splitlines()[1:]) if own else "  (none)"]
  shared = getattr(module, "SHARED_FLAGS", ())
  if shared:
    lines += ["", "flags shared with other commands:"]
    for name in (n for n in shared if n in flags.FLAGS):
      flag = flags.FLAGS[name]
      lines += [f"  --{name}: {flag.help}", f"    (default: {flag.default_as_str})"]
  if "config" in flags.FLAGS:
    lines += ["", "Any config field is a flag too: --config.<section>.<field>=value (see the "
              "--config file)."]
  lines += ["Run `valle-jax {command} --helpfull` for every library's flags as well.".format(
      command=command)]
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
    print(_usage())
    sys.exit(0 if len(argv) >= 2 else 2)
  command = argv[1]
  if command not in COMMANDS:
    sys.exit(f"valle-jax: unknown command {command!r}.\n\n{_usage()}")
  prog, args = f"valle-jax {command}", argv[2:]
  # A config flag reads its overrides from sys.argv, at import too: keep them out of the
  # import, so that a misspelt field is reported by `config_check` below, in one line.
  caller_argv, sys.argv = sys.argv, [argv[0], command]
  try:
    module = importlib.import_module(COMMANDS[command][0])
    if command not in DATA_COMMANDS:   # the commands that read a run config
      from valle_jax import variants  # pylint: disable=g-import-not-at-top
      variants.load_all()
    _run_command(command, prog, args, module, argv)
  finally:
    sys.argv = caller_argv     # for callers in the same process (tests)


def _run_command(command: str, prog: str, args: list[str], module, argv: list[str]) -> None:
  """Parses the command's flags (config checked first) and runs its `main`; exits."""
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top

  from valle_jax import config_check  # pylint: disable=g-import-not-at-top
  from valle_jax.errors import UserError  # pylint: disable=g-import-not-at-top

  if any(a in ("-h", "--help", "-help", "--h") for a in args):
    print(_command_help(command, module))
    sys.exit(0)

  def fail(message: str, code: int = 2):
    sys.stderr.write(f"{prog}: error: {message}\n")
    sys.exit(code)

  def parse_flags(full_argv: list[str]) -> list[str]:
    """The config file and overrides checked first, then absl's parse; errors one line."""
    try:
      rest = full_argv[1:]
      if "config" in flags.FLAGS:
        rest = config_check.command_line(rest, flags.FLAGS["config"].default_as_str.strip("'"))
      sys.argv = [full_argv[0]] + rest     # where the config flag reads its overrides
      return flags.FLAGS(sys.argv)
    except UserError as e:
      fail(str(e))
    except flags.Error as e:
      fail(f"{e} (see `valle-jax {command} --help`)")

  def run(args):
    if not any(a.startswith(("--verbosity", "-v=", "--v=")) for a in argv):
      absl_logging.set_verbosity(absl_logging.WARNING)  # libraries' INFO chatter off
    try:
      return module.main(args)
    except UserError as e:
      fail(str(e), e.exit_code)
    except KeyboardInterrupt:
      fail("interrupted", 130)

  app.run(run, argv=[prog] + args, flags_parser=parse_flags)


if __name__ == "__main__":
  main()
