"""Synthesis: text + an acoustic prompt -> speech, with a trained AR and NAR (the library of
`valle-jax synthesize`, valle_jax/synthesize_cli.py, and of `valle_jax.load`, api.py).

Modes (VALL-E §4): **zero-shot**: the phonemes are the prompt's transcript followed by the
text, the acoustic prompt is the whole enrolled utterance, and the output is what comes
after it. **continual**: the phonemes are the text of the whole utterance, the acoustic
prompt is its first `continual_seconds` (3 s), and the output is the whole utterance
(prompt included).

The core is `synthesize(...)`: requests in, waveforms out, batched through
`sampling.prepare_batch` (a fixed batch size and bucketed lengths, so a new text rarely
recompiles) and the run's `sampling.Decoding` (VALL-E's: `sampling.sample_ar`, then
`sampling.decode_nar`; a variant's recipe may give its own). Every user mistake (empty or
unpronounceable text, a missing, silent, too short or too long prompt, a checkpoint without
the models) is a `UserError` with one sentence saying what to do.

**Devices**: given a `mesh` (`synthesis_mesh`; the CLI and the API default to all local
devices on the data axis), each batch runs sharded over it as training does
(valle_jax/sharding.py): its rows over the data x fsdp axes, a batch padded to a multiple of
that size (the padding dropped), the parameters placed by their logical axes; the KV cache
inside the sampler follows the rows (the compiler propagates the batch sharding into it).
"""
from __future__ import annotations

import csv
import dataclasses
import math
import os
from typing import Any, Mapping, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from valle_jax import audio, config_check, io_check, sampling, sharding, text
from valle_jax.errors import UserError

MIN_PROMPT_SECONDS = 1.0
SILENCE_RMS = 1e-3           # a prompt quieter than this (full scale = 1) is called silent
# The synthesis mesh's (data, fsdp, tensor) sizes when not given: all local devices on data.
MESH = {"data": -1, "fsdp": 1, "tensor": 1}


@dataclasses.dataclass(frozen=True)
class Request:
  """One utterance to make.

  text: what to say (continual mode: the whole utterance's transcript).
  prompt: the acoustic prompt: a path (any libsndfile format, any rate, mono or not), or
    (waveform [N] or [N, channels], its sample rate).
  prompt_text: the prompt's transcript (zero-shot mode; unused in continual mode).
  out: where to write the wav (used by the CLI only).
  """
  text: str
  prompt: str | tuple[np.ndarray, int]
  prompt_text: str = ""
  out: str = ""


def _phoneme_ids(words: str, what: str, symbols: text.SymbolTable, lang: str) -> np.ndarray:
  """Text -> phoneme ids [L], or a `UserError` for an empty, unpronounceable or long text."""
  if not words.strip():
    raise UserError(f"{what} is empty; give some words to say.")
  phones = text.phonemize(words, lang)
  if all(s in text.PUNCTUATION or s == text.WORD for s in phones):
    raise UserError(f"{what} {words!r} has nothing to pronounce; give it some words.")
  ids = symbols.encode(phones, text=words)
  if len(ids) > sampling.PHONEME_BUCKETS[-1]:
    raise UserError(f"{what} has {len(ids)} phonemes, more than the "
                    f"{sampling.PHONEME_BUCKETS[-1]} the sampler takes; split it.")
  return ids


def request_phonemes(request: Request, symbols: text.SymbolTable, lang: str, *,
                     continual: bool = False, what: str = "the request"
                     ) -> tuple[np.ndarray, int]:
  """A request's phoneme ids [L] and how many of them are the prompt's transcript: zero-shot,
  `text.join_prompt_and_text` of the prompt text and the text (training pairs' layout);
  continual, the text alone."""
  words = _phoneme_ids(request.text, f"the text of {what}", symbols, lang)
  if continual:
    return words, 0
  heard = _phoneme_ids(request.prompt_text, f"the prompt text of {what}", symbols, lang)
  return text.join_prompt_and_text(heard, words, symbols)


def _prompt_wav(prompt: str | tuple[np.ndarray, int], sample_rate: int
                ) -> tuple[np.ndarray, str]:
  """A request's prompt -> (float32 mono waveform [N] at `sample_rate`, its name in errors)."""
  if isinstance(prompt, (str, os.PathLike)):
    try:
      return audio.load_audio(prompt, sample_rate), repr(os.fspath(prompt))
    except audio.AudioError as e:
      raise UserError(f"cannot use the prompt {e.path!r} ({e.reason.replace('_', ' ')}); "
                      "give a readable audio file.") from None
  wav, rate = prompt
  wav = np.asarray(wav, np.float32)
  if wav.ndim == 2:
    wav = wav.mean(axis=1)                         # [N, channels] -> [N]
  if wav.ndim != 1 or not np.isfinite(wav).all() or not rate > 0:
    raise UserError(f"the prompt waveform (shape {np.shape(prompt[0])}, rate {rate}) is not "
                    "finite samples shaped [N] or [N, channels] at a positive sample rate.")
  return audio.resample(wav, int(rate), sample_rate), "waveform"


def _prompt_codes(prompt: str | tuple[np.ndarray, int], codec, seconds: float | None
                  ) -> np.ndarray:
  """A request's prompt -> codes [T, Q] (mixed to mono, resampled, cut to `seconds` if given)."""
  wav, name = _prompt_wav(prompt, codec.sample_rate)
  if seconds is not None:
    wav = wav[:int(seconds * codec.sample_rate)]
  duration = len(wav) / codec.sample_rate
  longest = sampling.PROMPT_BUCKETS[-1] / codec.frame_rate
  if not MIN_PROMPT_SECONDS <= duration <= longest:
    raise UserError(f"the prompt {name} lasts {duration:.2f} s; give one of "
                    f"{MIN_PROMPT_SECONDS:g} to {longest:.1f} s.")
  if float(np.sqrt(np.mean(np.square(wav)))) < SILENCE_RMS:
    raise UserError(f"the prompt {name} is silent; give a recording of the voice to clone.")
  return np.asarray(codec.encode(wav, codec.sample_rate), np.int32)


def synthesis_mesh(sizes: Mapping[str, int] | None = None) -> jax.sharding.Mesh:
  """The mesh synthesis runs on: this process's devices as `sizes` of the (data, fsdp,
  tensor) axes (-1: the rest), `MESH`'s where not given (all local devices on the data
  axis). Without a -1, the first data x fsdp x tensor devices; a `UserError` for sizes the
  devices cannot make."""
  unknown = sorted(set(sizes or {}) - set(sharding.MESH_AXES))
  if unknown:
    raise UserError(f"unknown mesh axes {unknown}; the axes are {list(sharding.MESH_AXES)}.")
  sizes = {**MESH, **(sizes or {})}
  config_check.check(config_check.mesh(ml_collections.ConfigDict({"mesh": sizes})),
                     "synthesis mesh")
  devices = jax.local_devices()
  if -1 not in sizes.values():
    needed = math.prod(sizes.values())
    if needed > len(devices):
      raise UserError(f"the synthesis mesh {sizes} needs {needed} devices, but "
                      f"{len(devices)} are available.")
    devices = devices[:needed]
  return sharding.make_mesh(sizes, devices)


def synthesize(ar, nar, symbols: text.SymbolTable, codec, requests: Sequence[Request],
               options: sampling.SampleOptions, *, continual: bool = False,
               continual_seconds: float = 3.0, lang: str = "en-us", seed: int = 0,
               batch_size: int = 1, codebooks: int = 0,
               decoding: sampling.Decoding | None = None, nar_prompt: str = "prefix",
               mesh: jax.sharding.Mesh | None = None) -> list[np.ndarray]:
  """Makes each request's speech.

  Args:
    ar, nar: `models.ARModel` and `models.NARModel` (same codec and symbols).
    symbols: the symbol table the models were trained with.
    codec: a `valle_jax.codec.Codec` (the one the training data was made with).
    requests: what to say, and in whose voice.
    options: AR sampling options.
    continual: continual mode (see the module docstring) instead of zero-shot.
    seed: the AR's sampling seed (the same seed gives the same speech).
    batch_size: requests per compiled call (the last batch is padded to it), with a `mesh`
      rounded up to a multiple of its data x fsdp size.
    codebooks: make and decode only the codec's first K codebooks (a lower bandwidth, K - 1
      NAR passes); 0: all.
    decoding: how the models make the codes (default VALL-E's `sampling.Decoding`; a
      variant's run gives its recipe's, `recipe.decoding(config, codec_description)`).
    nar_prompt: the NAR's training prompt (its run's `data.nar_prompt`, `trained_nar_prompt`).
      A NAR trained on "segment" or "other_utterance" prompts read only its target's text,
      so zero-shot it reads the text without the prompt's transcript (lifeiteng/vall-e's
      prefix_mode 2 inference); a "prefix" NAR reads both, prompt and target being one
      utterance in training.
    mesh: run each batch sharded over this mesh (see the module docstring; `synthesis_mesh`
      makes one); None: on the default device.
  Returns:
    float32 waveforms at `codec.sample_rate`, one per request (empty when the AR ended at
    once). Logs a warning for each that stopped at the length limit instead of EOS.
  """
  g = ar.group_size
  if not 0 <= codebooks <= codec.num_codebooks:
    raise UserError(f"--codebooks must be in [1, {codec.num_codebooks}] (0: all of the "
                    f"codec's), got {codebooks}.")
  decoding = decoding or sampling.Decoding()
  decoding.check(continual)
  examples = []
  for n, r in enumerate(requests, 1):
    where = f"request {n}" if len(requests) > 1 else "the request"
    words, heard = request_phonemes(r, symbols, lang, continual=continual, what=where)
    prompt = _prompt_codes(r.prompt, codec, continual_seconds if continual else None)
    examples.append((words, prompt, heard))
  ar_def, ar_state = nnx.split(ar)
  nar_def, nar_state = nnx.split(nar)
  if mesh is not None:
    ar_state = sharding.place_state(ar_state, mesh)
    nar_state = sharding.place_state(nar_state, mesh)
    split = sharding.batch_parallelism(mesh)
    batch_size = -(-batch_size // split) * split
  key = jax.random.key(seed)
  wavs = []
  for start in range(0, len(examples), batch_size):
    chunk = examples[start:start + batch_size]
    batch = sampling.prepare_batch([w for w, _, _ in chunk], [p for _, p, _ in chunk], g,
                                   options, batch_size=batch_size,
                                   prompt_phoneme_lens=[h for _, _, h in chunk])
    on_devices = batch
    if mesh is not None:       # the rows over data x fsdp (max_steps is static, not an array)
      on_devices = batch._replace(**sharding.shard_batch(
          {name: value for name, value in batch._asdict().items() if name != "max_steps"},
          mesh))
    made = decoding(ar_def, ar_state, nar_def, nar_state, on_devices,
                    jax.random.fold_in(key, start), options, codebooks,
                    nar_text_only=nar_prompt != "prefix")
    codes, lengths, hit_limit = jax.device_get(made)
    for i in range(len(chunk)):
      if hit_limit[i]:
        logging.warning("request %d reached the length limit (%d frames) without ending.",
                        start + i + 1, lengths[i])
      made = codes[i, :lengths[i]]
      if continual:
        made = np.concatenate([batch.prompt[i, :batch.prompt_lens[i], :made.shape[1]], made])
      wavs.append(np.asarray(codec.decode(made), np.float32) if len(made) else
                  np.zeros((0,), np.float32))
  return wavs


def trained_nar_prompt(config) -> str:
  """The NAR prompt a run was trained with (`data.nar_prompt`; earlier runs had the option
  `prompt_from_other_utterance`)."""
  if "nar_prompt" in config.data:
    return config.data.nar_prompt
  return "other_utterance" if config.data.get("prompt_from_other_utterance") else "prefix"


def read_tsv(path: str) -> list[Request]:
  """Requests from a TSV (see the module docstring); paths relative to the TSV's folder."""
  rows = list(csv.reader(io_check.text_lines(path, "--tsv"), delimiter="\t",
                         quoting=csv.QUOTE_NONE))
  base = os.path.dirname(os.path.abspath(path))
  requests = []
  for n, row in enumerate(rows, 1):
    if not row or not "".join(row).strip():
      continue
    if len(row) < 2 or len(row) > 4:
      raise UserError(f"{path} line {n} has {len(row)} fields; write text<TAB>prompt.wav"
                      "<TAB>prompt text<TAB>out.wav (the last two may be empty).")
    row = row + [""] * (4 - len(row))
    out = os.path.join(base, row[3]) if row[3] else f"{n}.wav"
    requests.append(Request(row[0], os.path.join(base, row[1]), row[2], out))
  if not requests:
    raise UserError(f"the TSV {path!r} holds no request.")
  return requests


def sample_options(config, overrides: dict[str, Any]) -> sampling.SampleOptions:
  """A run's sampling options (its config's `sample` section) with `overrides`."""
  try:
    return sampling.SampleOptions.from_config(config.get("sample"), **overrides)
  except ValueError as e:
    raise UserError(str(e)) from None


def load_models(path: str, nar_path: str | None = None):
  """(bundle, NAR bundle, symbols, codec) of a run, the NAR from `nar_path` when given (else
  the bundle itself); a `UserError` for a checkpoint without the models or runs that don't
  match."""
  from valle_jax import checkpoint, codec as codec_lib  # pylint: disable=g-import-not-at-top
  bundle = checkpoint.load_inference_bundle(path)
  nar_bundle = checkpoint.load_inference_bundle(nar_path) if nar_path else bundle
  if bundle.ar is None:
    raise UserError(f"the checkpoint {path} holds no AR model (it was trained with "
                    f"train.model={bundle.config.train.model!r}); pass an AR or 'both' run.")
  if nar_bundle.nar is None:
    raise UserError(f"the checkpoint {nar_path or path} holds no NAR model; pass the NAR "
                    "run with --nar_checkpoint.")
  if nar_bundle is not bundle:
    if nar_bundle.recipe.name != bundle.recipe.name:   # decoding follows the AR's recipe
      raise UserError(f"the AR run is variant {bundle.recipe.name!r} and the NAR run "
                      f"{nar_bundle.recipe.name!r}; pass two runs of one variant.")
    if nar_bundle.symbols != bundle.symbols:
      raise UserError("the AR and NAR checkpoints were trained with different symbol "
                      "tables; use runs on the same dataset.")
    codec_lib.check_same_codec(bundle.codec_description, nar_bundle.codec_description,
                               f"the NAR checkpoint {nar_path}")
  return bundle, nar_bundle, bundle.symbols, codec_lib.get_codec(bundle.codec_description)
