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
    "train": ("valle_jax.train", "train the AR and/or NAR model on a prepared dataset (resumes from --workdir)"),
    "synthesize": ("valle_jax.synthesize", "text + a voice prompt -> speech (zero-shot or --continual; TSV batches)"),
    "evaluate": ("valle_jax.evaluate_cli", "the paper's evaluation of a run on a test list (cross or continual): WER and speaker similarity"),
    "prepare": ("data_prep.prepare", "build a dataset (phonemes + codec codes, ArrayRecord) from a corpus"),
    "demo": ("valle_jax.demo", "VALL-E end to end offline: corpus, codec, data, training, zero-shot samples, evaluation, report.html"),
    "align": ("valle_jax.variants.aligned.align_cli", "phoneme-to-frame forced alignments of a prepared dataset (for the aligned variant)"),
    "import-checkpoint": ("valle_jax.import_checkpoint", "another implementation's VALL-E checkpoint (--format=lifeiteng) -> a run synthesize loads"),
    "make-corpus": ("data_prep.make_corpus", "write the built-in synthetic multi-voice corpus (Debian TTS voices, KJV text)"),
}


def _usage() -> str:
  width = max(len(c) for c in COMMANDS)
  lines = ["usage: valle-jax <command> [flags]", "", "commands:"]
  lines += [f"  {name:<{width}}  {desc}" for name, (_, desc) in COMMANDS.items()]
  lines += ["", "Run `valle-jax <command> --help` for a command's flags."]
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
    print(_usage())
    sys.exit(0 if len(argv) >= 2 else 2)
  command = argv[1]
  if command not in COMMANDS:
    sys.exit(f"valle-jax: unknown command {command!r}.\n\n{_usage()}")
  module = importlib.import_module(COMMANDS[command][0])
  from valle_jax import variants  # pylint: disable=g-import-not-at-top
  variants.load_all()

  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top

  from valle_jax.errors import UserError  # pylint: disable=g-import-not-at-top

  def run(args):
    if not any(a.startswith(("--verbosity", "-v=", "--v=")) for a in argv):
      absl_logging.set_verbosity(absl_logging.WARNING)  # libraries' INFO chatter off
    try:
      return module.main(args)
    except UserError as e:
      sys.stderr.write(f"valle-jax {command}: error: {e}\n")
      sys.exit(2)
    except KeyboardInterrupt:
      sys.stderr.write(f"valle-jax {command}: interrupted\n")
      sys.exit(130)

  app.run(run, argv=[f"valle-jax {command}"] + argv[2:])


if __name__ == "__main__":
  main()
