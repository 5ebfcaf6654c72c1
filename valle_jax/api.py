"""The Python API: load a trained run once, then make speech as numpy arrays.

    tts = valle_jax.load("runs/paper")
    wavs = tts.synthesize(["Hello there."], "speaker.wav", "What the speaker says in it.")

`valle-jax synthesize` (synthesize_cli.py) runs through the same `load` and
`TTS.synthesize_requests`; the work is done by valle_jax/synthesize.py. The models run
sharded over a device mesh (`load`'s `mesh`; by default all local devices on the data axis).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import jax
import ml_collections
import numpy as np
from flax import nnx

from valle_jax import sampling, sharding, synthesize, text
from valle_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class TTS:
  """A loaded run: its AR and NAR, their symbol table and codec, and how it decodes.

  config: the AR run's config (its `sample` section gives the sampling defaults).
  nar_prompt: the NAR's training prompt (`synthesize.trained_nar_prompt`).
  decoding: the run's recipe's decoding (VALL-E's: AR sampling, then the NAR's passes).
  mesh: the devices synthesis runs on (`synthesize.synthesis_mesh`); the models' parameters
    are placed on it.
  """
  ar: Any
  nar: Any
  symbols: text.SymbolTable
  codec: Any
  config: ml_collections.ConfigDict
  nar_prompt: str
  decoding: sampling.Decoding
  mesh: jax.sharding.Mesh

  @property
  def sample_rate(self) -> int:
    """The rate of the waveforms made (the codec's)."""
    return self.codec.sample_rate

  def synthesize(self, texts: str | Sequence[str], prompt_wav: str | tuple[np.ndarray, int],
                 prompt_text: str = "", **kwargs) -> list[np.ndarray]:
    """Each text said in the voice of one prompt.

    Args:
      texts: what to say: one text or a list (continual mode: whole utterances' transcripts).
      prompt_wav: the voice: an audio file's path, or (waveform [N] or [N, channels], its
        sample rate).
      prompt_text: the prompt's transcript (zero-shot; unused with continual=True).
      **kwargs: `synthesize_requests`'s options.
    Returns:
      float32 mono waveforms at `sample_rate`, one per text.
    """
    texts = [texts] if isinstance(texts, str) else list(texts)
    return self.synthesize_requests(
        [synthesize.Request(t, prompt_wav, prompt_text) for t in texts], **kwargs)

  def synthesize_requests(self, requests: Sequence[synthesize.Request], *, seed: int = 0,
                          temperature: float | None = None, top_k: int | None = None,
                          top_p: float | None = None, ras: bool | None = None,
                          continual: bool = False, continual_seconds: float = 3.0,
                          batch_size: int = 1, codebooks: int = 0, lang: str = "en-us"
                          ) -> list[np.ndarray]:
    """Each request's speech (`synthesize.synthesize` with this run's models and settings).

    temperature, top_k, top_p, ras: AR sampling options overriding the run's (None: the
    run's). The others are `synthesize.synthesize`'s; the same seed gives the same speech (at
    the same batch size: `batch_size`, rounded up to a multiple of the mesh's data x fsdp
    size, is how many requests are made together).
    """
    if batch_size < 1:
      raise UserError(f"batch_size must be >= 1, got {batch_size}.")
    overrides = {name: value for name, value in (
        ("temperature", temperature), ("top_k", top_k), ("top_p", top_p), ("ras", ras))
        if value is not None}
    options = synthesize.sample_options(self.config, overrides)
    return synthesize.synthesize(
        self.ar, self.nar, self.symbols, self.codec, requests, options,
        continual=continual, continual_seconds=continual_seconds, lang=lang, seed=seed,
        batch_size=batch_size, codebooks=codebooks, decoding=self.decoding,
        nar_prompt=self.nar_prompt, mesh=self.mesh)


def load(run_dir: str, nar_run_dir: str | None = None,
         mesh: Mapping[str, int] | jax.sharding.Mesh | None = None) -> TTS:
  """The models of a training workdir (or one of its checkpoints/<step> folders), the NAR
  from `nar_run_dir` when it was trained apart, placed on `mesh`: a `jax.sharding.Mesh`, or
  sizes of its (data, fsdp, tensor) axes for `synthesize.synthesis_mesh`, e.g. {"data": 1}
  for one device (default: all local devices on the data axis). A `UserError` when they
  cannot be used."""
  from valle_jax import variants  # pylint: disable=g-import-not-at-top  (as `valle-jax` does)
  variants.load_all()
  if not isinstance(mesh, jax.sharding.Mesh):
    mesh = synthesize.synthesis_mesh(mesh)
  bundle, nar_bundle, symbols, codec = synthesize.load_models(run_dir, nar_run_dir)
  ar, nar = bundle.ar, nar_bundle.nar
  for model in (ar, nar):
    nnx.update(model, sharding.place_state(nnx.state(model), mesh))
  return TTS(ar=ar, nar=nar, symbols=symbols, codec=codec, config=bundle.config,
             nar_prompt=synthesize.trained_nar_prompt(nar_bundle.config),
             decoding=bundle.recipe.decoding(bundle.config, bundle.codec_description),
             mesh=mesh)
