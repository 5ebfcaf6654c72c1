"""`valle-jax evaluate`: the VALL-E paper's evaluation of a training run.

    valle-jax evaluate --checkpoint=runs/x --librispeech=LibriSpeech --out_dir=eval/cross
    valle-jax evaluate --checkpoint=runs/x --librispeech=LibriSpeech --mode=continual \\
        --out_dir=eval/continual
    valle-jax evaluate --checkpoint=runs/x --test_list=corpus/manifest.tsv --split=test \\
        --out_dir=eval/corpus --asr=hubert --asr_model=models/hubert-large-ls960-ft \\
        --speaker=wavlm --speaker_model=models/wavlm-base-plus-sv

Test set: `--librispeech=DIR`: the paper's, LibriSpeech test-clean utterances of 4 to 10 s;
or `--test_list=FILE.tsv`: a header naming id, audio, text and speaker (optionally split),
audio paths relative to the TSV (what `valle-jax make-corpus` writes), every duration unless
--min_seconds / --max_seconds say otherwise.

Modes: **cross** (zero-shot): the prompt is another utterance of the same speaker in the
list, the one closest to --prompt_seconds, whole, with its transcript; targets whose speaker
has no other utterance are left out. **continual**: the prompt is the target's own first
--prompt_seconds and the model makes the whole utterance from its transcript.

Systems: ground truth, codec resynthesis (encode + decode with the run's codec) and
valle-jax, scored alike (`valle_jax.metrics`): WER (ASR + jiwer) and speaker similarity to
the prompt, the ground truth and the other speakers' prompts.

In --out_dir: samples/ (wavs, samples.json), results.csv (per utterance and system),
results.json (the table and the settings), settings.json. A re-run with the same settings
reuses the wavs made so far, so only the scoring is redone (with other scorers, say) or an
interrupted run goes on; other settings in the same --out_dir are refused.

Shared with `valle-jax synthesize`: --checkpoint, --nar_checkpoint, --temperature,
--top_k, --top_p, --ras, --seed, --batch_size, --codebooks, --lang, --out_dir (the codec
resynthesis always decodes all the codebooks).
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

from absl import flags

from data_prep import corpora
from valle_jax import config_check, evaluate, io_check, metrics, synthesize, synthesize_cli
from valle_jax.errors import UserError

MODES = ("cross", "continual")
FLAGS = flags.FLAGS
# `valle-jax synthesize` flags this command uses too (listed by `valle-jax evaluate --help`).
SHARED_FLAGS = ("checkpoint", "nar_checkpoint", "temperature", "top_k", "top_p", "ras", "seed",
                "batch_size", "codebooks", "lang", "out_dir")

_TEST_LIST = flags.DEFINE_string("test_list", None, "Test-list TSV (id, audio, text, "
                                 "speaker columns; audio relative to it).")
_LIBRISPEECH = flags.DEFINE_string("librispeech", None, "LibriSpeech folder holding "
                                   "test-clean/: the paper's 4-10 s test set.")
_SPLIT = flags.DEFINE_string("split", None, "Only the test-list rows of this split.")
_MODE = flags.DEFINE_string("mode", "cross", "cross: another utterance of the speaker is the "
                            "prompt (zero-shot); continual: the utterance's own first seconds.")
_PROMPT_SECONDS = flags.DEFINE_float("prompt_seconds", 3.0, "Cross: the prompt is the "
                                     "utterance closest to this; continual: its length.")
_MIN_SECONDS = flags.DEFINE_float("min_seconds", None, "Shortest target utterance "
                                  "(default: 0, with --librispeech 4).")
_MAX_SECONDS = flags.DEFINE_float("max_seconds", None, "Longest target utterance "
                                  "(default: no limit, with --librispeech 10).")
_MAX_UTTERANCES = flags.DEFINE_integer("max_utterances", 0, "Evaluate the first N (0: all).")
_ASR = flags.DEFINE_string("asr", "pocketsphinx", "ASR scorer: pocketsphinx or hubert.")
_ASR_MODEL = flags.DEFINE_string("asr_model", None, "The ASR scorer's model: a hub id or a "
                                 "local folder (hubert).")
_SPEAKER = flags.DEFINE_string("speaker", "resemblyzer", "Speaker scorer: resemblyzer or "
                               "wavlm.")
_SPEAKER_MODEL = flags.DEFINE_string("speaker_model", None, "The speaker scorer's model: a "
                                     "hub id or a local folder (wavlm).")


def _test_set(test_list: str | None, librispeech: str | None, split: str | None
              ) -> tuple[list[dict[str, str]], tuple[float, float]]:
  """The rows of the test list or of LibriSpeech test-clean, and their default bounds."""
  if bool(test_list) == bool(librispeech):
    raise UserError("give either --test_list (a TSV of utterances) or --librispeech (the "
                    "LibriSpeech folder holding test-clean/).")
  if test_list:
    return evaluate.read_test_list(test_list, split), (0.0, math.inf)
  if split:
    raise UserError("--split picks rows of a --test_list; leave it out with --librispeech.")
  return corpora.librispeech_test_list(librispeech)


def run(checkpoint: str, out_dir: str, *, test_list: str | None = None,
        librispeech: str | None = None, split: str | None = None, mode: str = "cross",
        prompt_seconds: float = 3.0, min_seconds: float | None = None,
        max_seconds: float | None = None, max_utterances: int = 0,
        asr: str = "pocketsphinx", asr_model: str | None = None,
        speaker: str = "resemblyzer", speaker_model: str | None = None,
        nar_checkpoint: str | None = None, sample: dict[str, Any] | None = None,
        seed: int = 0, batch_size: int = 1, lang: str = "en-us", codebooks: int = 0,
        mesh=None) -> dict[str, Any]:
  """Synthesises and scores a test set (see the module docstring; `sample`: overrides of
  the run's `SampleOptions`; `mesh`: synthesise each batch sharded over it, as
  `synthesize.synthesize` does). Returns {"table", "rows", "csv", "json", "samples"}."""
  if mode not in MODES:
    raise UserError(f"--mode must be one of {', '.join(MODES)}, not {mode!r}.")
  rows, (lo, hi) = _test_set(test_list, librispeech, split)
  lo = lo if min_seconds is None else min_seconds
  hi = hi if max_seconds is None else max_seconds
  seconds = evaluate.durations(rows)
  targets = [r for r in rows if lo <= seconds[r["id"]] <= hi]
  if not targets:
    raise UserError(f"none of the {len(rows)} utterances lasts {lo:g} to {hi:g} s; widen "
                    "--min_seconds / --max_seconds.")
  if mode == "cross":
    pairs = evaluate.heldout_pairs(rows, prompt_seconds, seconds, targets)
    if not pairs:
      raise UserError("no speaker has two utterances in the test list, and cross mode "
                      "prompts with another one of the same speaker; add some or use "
                      "--mode=continual.")
  else:
    pairs = evaluate.continual_pairs(targets, prompt_seconds, seconds)
    if not pairs:
      raise UserError(f"no utterance lasts more than --prompt_seconds={prompt_seconds:g}, "
                      "so continual mode has nothing to continue; lower it.")
  if max_utterances:
    pairs = pairs[:max_utterances]
  # The scorers first: a bad scorer option fails before the long synthesis, not after it.
  asr_scorer = metrics.get_asr(asr, **({"model": asr_model} if asr_model else {}))
  speaker_scorer = metrics.get_speaker_encoder(
      speaker, **({"model": speaker_model} if speaker_model else {}))
  bundle, nar_bundle, symbols, codec = synthesize.load_models(checkpoint, nar_checkpoint)
  options = synthesize.sample_options(bundle.config, sample or {})

  def absolute(path):
    return os.path.abspath(path) if path else None

  settings = {"checkpoint": absolute(checkpoint), "step": bundle.step,
              "nar_checkpoint": absolute(nar_checkpoint), "test_list": absolute(test_list),
              "librispeech": absolute(librispeech), "split": split or None, "mode": mode,
              "prompt_seconds": prompt_seconds, "min_seconds": lo,
              "max_seconds": hi if math.isfinite(hi) else None,
              "sample_options": dataclasses.asdict(options),
              "seed": seed,
              "batch_size": batch_size, "lang": lang,
              **({"codebooks": codebooks} if codebooks else {}),   # older folders: none
              **({"mesh": dict(mesh.shape)} if mesh is not None and mesh.size > 1 else {})}
  evaluate.check_settings(os.path.join(out_dir, "settings.json"), settings, "samples",
                          "--out_dir")
  samples = evaluate.synthesize_samples(
      bundle.ar, nar_bundle.nar, symbols, codec, pairs, options,
      os.path.join(out_dir, "samples"), continual=mode == "continual",
      prompt_seconds=prompt_seconds, lang=lang, seed=seed, batch_size=batch_size,
      codebooks=codebooks, mesh=mesh,
      decoding=bundle.recipe.decoding(bundle.config, bundle.codec_description),
      nar_prompt=synthesize.trained_nar_prompt(nar_bundle.config))
  scores = evaluate.score_samples(samples, asr_scorer, speaker_scorer)
  table = evaluate.summarize(scores)
  csv_path, json_path = evaluate.write_results(
      out_dir, scores, table, {**settings, "asr": asr, "asr_model": asr_model,
                               "speaker": speaker, "speaker_model": speaker_model,
                               "utterances": len(samples)})
  return {"table": table, "rows": scores, "csv": csv_path, "json": json_path,
          "samples": os.path.join(out_dir, "samples", "samples.json")}


def main(argv):
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}; pass everything as --flags.")
  if not FLAGS.checkpoint:
    raise UserError("--checkpoint is required: the training run to evaluate.")
  if not FLAGS["out_dir"].present:
    raise UserError("--out_dir is required: the folder for the samples and results.")
  config_check.check(config_check.flag_problems([
      ("batch_size", FLAGS.batch_size, FLAGS.batch_size >= 1, "must be >= 1"),
      ("max_utterances", _MAX_UTTERANCES.value, _MAX_UTTERANCES.value >= 0,
       "must be >= 0 (0: all)"),
      ("prompt_seconds", _PROMPT_SECONDS.value, _PROMPT_SECONDS.value > 0, "must be > 0"),
      ("min_seconds", _MIN_SECONDS.value, (_MIN_SECONDS.value or 0) >= 0, "must be >= 0"),
      ("max_seconds", _MAX_SECONDS.value, (_MAX_SECONDS.value or 1) > 0, "must be > 0"),
      ("codebooks", FLAGS.codebooks, FLAGS.codebooks >= 0, "must be >= 0 (0: all)")]),
      "flags")
  io_check.output_dir(FLAGS.out_dir, "--out_dir")
  result = run(FLAGS.checkpoint, FLAGS.out_dir, test_list=_TEST_LIST.value,
               librispeech=_LIBRISPEECH.value, split=_SPLIT.value, mode=_MODE.value,
               prompt_seconds=_PROMPT_SECONDS.value, min_seconds=_MIN_SECONDS.value,
               max_seconds=_MAX_SECONDS.value, max_utterances=_MAX_UTTERANCES.value,
               asr=_ASR.value, asr_model=_ASR_MODEL.value, speaker=_SPEAKER.value,
               speaker_model=_SPEAKER_MODEL.value, nar_checkpoint=FLAGS.nar_checkpoint,
               sample=synthesize_cli.sample_flags(), seed=FLAGS.seed,
               batch_size=FLAGS.batch_size, lang=FLAGS.lang, codebooks=FLAGS.codebooks,
               mesh=synthesize_cli.mesh_flags())
  from valle_jax import report  # pylint: disable=g-import-not-at-top
  print("\n" + report.results_table(result["table"]))
  print(f"\n[evaluate] per utterance: {result['csv']}\n[evaluate] table and settings: "
        f"{result['json']}")
