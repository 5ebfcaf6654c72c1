"""`valle-jax synthesize`: text + an acoustic prompt -> speech, with a trained AR and NAR.

    valle-jax synthesize --checkpoint=runs/x --text="Hello there." \\
        --prompt=speaker.wav --prompt_text="What the speaker says in it." --out=out.wav
    valle-jax synthesize --checkpoint=runs/x --continual --text="The whole utterance." \\
        --prompt=utterance.wav --out=out.wav
    valle-jax synthesize --checkpoint=runs/x --tsv=list.tsv --out_dir=out/

Modes (VALL-E §4): **zero-shot**: the phonemes are the prompt's transcript followed by the
text, the acoustic prompt is the whole enrolled utterance, and the output is what comes
after it. **continual**: the phonemes are the text of the whole utterance, the acoustic
prompt is its first `--continual_seconds` (3 s), and the output is the whole utterance
(prompt included). A TSV has one request a line: `text<TAB>prompt.wav<TAB>prompt
text<TAB>out.wav` (zero-shot) or `text<TAB>prompt.wav<TAB><TAB>out.wav` (continual);
relative paths are relative to the TSV, and `out.wav` defaults to `<line number>.wav` in
`--out_dir`.

The requests run sharded over this machine's devices (valle_jax/sharding.py): by default all
of them on the data axis, each device making its share of a batch's rows (`--batch_size` is
rounded up to a multiple of the data x fsdp size); `--mesh_data`, `--mesh_fsdp` and
`--mesh_tensor` set the (data, fsdp, tensor) sizes as training's `--config.mesh.*` do (-1:
the devices left), e.g. `--mesh_data=1` for one device.

The synthesis itself is valle_jax/synthesize.py's, through the Python API (`valle_jax.load`).
"""
from __future__ import annotations

import dataclasses
import io
import os
from typing import Any

from absl import flags

from valle_jax import api, config_check, io_check, paths, synthesize
from valle_jax.errors import UserError

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Training workdir (or a checkpoint "
                                  "step folder) holding the AR model, and the NAR unless "
                                  "--nar_checkpoint is given.")
_NAR_CHECKPOINT = flags.DEFINE_string("nar_checkpoint", None,
                                      "Workdir holding the NAR model, when trained apart.")
_TEXT = flags.DEFINE_string("text", None, "What to say.")
_PROMPT = flags.DEFINE_string("prompt", None, "Acoustic prompt: a recording of the voice.")
_PROMPT_TEXT = flags.DEFINE_string("prompt_text", "", "The prompt's transcript (zero-shot).")
_OUT = flags.DEFINE_string("out", "out.wav", "Output wav (with --text).")
_TSV = flags.DEFINE_string("tsv", None, "Batch input: text, prompt, prompt text, out wav.")
_OUT_DIR = flags.DEFINE_string("out_dir", ".", "Folder for TSV outputs without a path "
                               "(`valle-jax evaluate`: for its samples and results).")
_CONTINUAL = flags.DEFINE_bool("continual", False, "Continue the prompt's first seconds "
                               "(--text is then the whole utterance's transcript).")
_CONTINUAL_SECONDS = flags.DEFINE_float("continual_seconds", 3.0, "Prompt length, continual.")
_LANG = flags.DEFINE_string("lang", "en-us", "espeak-ng language of the texts.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_BATCH = flags.DEFINE_integer("batch_size", 1, "Requests per compiled batch.")
_CODEBOOKS = flags.DEFINE_integer("codebooks", 0, "Make and decode only the codec's first "
                                  "K codebooks, a lower bandwidth (0: all).")
_TEMPERATURE = flags.DEFINE_float("temperature", None, "AR sampling temperature.")
_TOP_K = flags.DEFINE_integer("top_k", None, "AR top-k (0: off).")
_TOP_P = flags.DEFINE_float("top_p", None, "AR top-p (1: off).")
_RAS = flags.DEFINE_bool("ras", None, "Repetition-aware sampling (VALL-E 2).")
_MESH = {axis: flags.DEFINE_integer(f"mesh_{axis}", size, f"Device mesh: the {axis} axis's "
                                    "size (-1: the devices left).")
         for axis, size in synthesize.MESH.items()}


def sample_flags() -> dict[str, Any]:
  """The AR sampling options given on the command line (--temperature, --top_k, --top_p,
  --ras), as `SampleOptions` overrides."""
  return {name: flag.value for name, flag in (
      ("temperature", _TEMPERATURE), ("top_k", _TOP_K), ("top_p", _TOP_P), ("ras", _RAS))
      if flag.value is not None}


def mesh_flags():
  """The mesh --mesh_data/--mesh_fsdp/--mesh_tensor ask for (checked; a `UserError` if
  they are bad)."""
  config_check.check(config_check.flag_problems([
      (f"mesh_{axis}", flag.value, flag.value >= 1 or flag.value == -1,
       "must be >= 1 or -1 (the devices left)") for axis, flag in _MESH.items()]), "flags")
  return synthesize.synthesis_mesh({axis: flag.value for axis, flag in _MESH.items()})


def main(argv):
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}; pass everything as --flags.")
  if not _CHECKPOINT.value:
    raise UserError("--checkpoint is required: a training workdir with the AR model.")
  if bool(_TEXT.value) == bool(_TSV.value):
    raise UserError("give either --text (with --prompt) or --tsv.")
  config_check.check(config_check.flag_problems([
      ("batch_size", _BATCH.value, _BATCH.value >= 1, "must be >= 1"),
      ("codebooks", _CODEBOOKS.value, _CODEBOOKS.value >= 0, "must be >= 0 (0: all)"),
      ("continual_seconds", _CONTINUAL_SECONDS.value, _CONTINUAL_SECONDS.value > 0,
       "must be > 0")]), "flags")
  if _TSV.value:
    requests = [dataclasses.replace(r, out=os.path.join(_OUT_DIR.value, r.out))
                for r in synthesize.read_tsv(_TSV.value)]
  else:
    if not _PROMPT.value:
      raise UserError("--prompt is required: a recording of the voice to use.")
    requests = [synthesize.Request(_TEXT.value, _PROMPT.value, _PROMPT_TEXT.value, _OUT.value)]
  for request in requests:     # before the models load and the synthesis, not after
    io_check.output_file(request.out, "--tsv output" if _TSV.value else "--out")
  mesh = mesh_flags()
  tts = api.load(_CHECKPOINT.value, _NAR_CHECKPOINT.value, mesh)
  wavs = tts.synthesize_requests(requests, **sample_flags(), continual=_CONTINUAL.value,
                                 continual_seconds=_CONTINUAL_SECONDS.value, lang=_LANG.value,
                                 seed=_SEED.value, batch_size=_BATCH.value,
                                 codebooks=_CODEBOOKS.value)
  import soundfile as sf  # pylint: disable=g-import-not-at-top
  for request, wav in zip(requests, wavs):
    paths.path(os.path.dirname(paths.absolute(request.out))).mkdir(parents=True, exist_ok=True)
    encoded = io.BytesIO()     # then written whole, locally or to gs://
    sf.write(encoded, wav, tts.sample_rate, format=os.path.splitext(request.out)[1][1:] or "WAV")
    paths.path(request.out).write_bytes(encoded.getvalue())
    print(f"{request.out}: {len(wav) / tts.sample_rate:.2f} s")
