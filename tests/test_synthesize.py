"""`synthesize`: zero-shot and continual end to end with tiny models, a random-weight
EnCodec and the default symbol table; sharded over 8 simulated devices as on one; batch TSV
input; one-sentence errors for bad input."""
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
import soundfile as sf
from flax import nnx
from jax.sharding import PartitionSpec as P

from configs import tiny
from valle_jax import models, sampling, sharding, synthesize, text
from valle_jax.codec import get_codec
from valle_jax.errors import UserError

OPTIONS = sampling.SampleOptions(top_k=20, max_frames_per_phoneme=1.0)


@pytest.fixture(scope="module")
def kit():
  cfg = tiny.get_config().model
  return dict(ar=models.ARModel(cfg, rngs=nnx.Rngs(0)), nar=models.NARModel(cfg, rngs=nnx.Rngs(1)),
              symbols=text.SymbolTable.default(),
              codec=get_codec({"name": "encodec", "weights": "random"}))


@pytest.fixture(scope="module")
def wavs(tmp_path_factory):
  """Prompt files: a 1.5 s voice-like tone at 24 kHz mono and at 44.1 kHz stereo, a 0.5 s
  one, a silent one."""
  root = tmp_path_factory.mktemp("prompts")

  def tone(seconds, rate, amplitude=0.3):
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * (120 + 30 * np.sin(3 * t)) * t)).astype(np.float32)

  files = {"mono": (tone(1.5, 24_000), 24_000),
           "stereo": (np.stack([tone(1.5, 44_100), tone(1.5, 44_100, 0.2)], 1), 44_100),
           "short": (tone(0.5, 24_000), 24_000), "silent": (np.zeros(36_000, np.float32), 24_000)}
  paths = {}
  for name, (wav, rate) in files.items():
    paths[name] = str(root / f"{name}.wav")
    sf.write(paths[name], wav, rate)
  return paths


def _run(kit, requests, codec=None, **kw):
  return synthesize.synthesize(kit["ar"], kit["nar"], kit["symbols"], codec or kit["codec"],
                               requests, OPTIONS, **kw)


class _DecodeRecorder:
  """The codec, recording the codes each `decode` call gets."""

  def __init__(self, codec):
    self.codec, self.decoded = codec, []

  def __getattr__(self, name):
    return getattr(self.codec, name)

  def decode(self, codes):
    self.decoded.append(np.asarray(codes))
    return self.codec.decode(codes)


def _decoded_codes(kit, requests, **kw):
  recorder = _DecodeRecorder(kit["codec"])
  _run(kit, requests, codec=recorder, **kw)
  return recorder.decoded


def test_zero_shot_and_continual(kit, wavs):
  """Two requests in one batch (a mono 24 kHz and a stereo 44.1 kHz prompt); each output
  is whole codec frames, at most 1 frame a phoneme of the limit; the same seed gives the
  same speech, and with `codebooks=2` the same frames decoded at a lower bandwidth;
  continual output starts with the prompt's frames, also at 2 codebooks."""
  requests = [synthesize.Request("Hello there, my friend.", wavs["mono"], "A quiet tone."),
              synthesize.Request("Good morning.", wavs["stereo"], "Another tone.")]
  out = _run(kit, requests, batch_size=2)
  hop = kit["codec"].sample_rate // 75
  assert len(out) == 2
  for wav, r in zip(out, requests):
    phonemes = len(text.text_to_ids(r.prompt_text, kit["symbols"])) + 1 + len(
        text.text_to_ids(r.text, kit["symbols"]))
    assert len(wav) % hop == 0 and 0 < len(wav) // hop <= phonemes
    assert np.isfinite(wav).all()
  again = _run(kit, requests, batch_size=2)
  for a, b in zip(out, again):
    np.testing.assert_array_equal(a, b)
  continual = [synthesize.Request("Hello there, my friend.", wavs["mono"])]
  (cont,) = _run(kit, continual, continual=True, batch_size=2)
  assert len(cont) // hop >= 113                   # 1.5 s of prompt (113 frames) + more
  for chosen, kw in ((requests, {}), (continual, {"continual": True})):
    full = _decoded_codes(kit, chosen, batch_size=2, **kw)
    low = _decoded_codes(kit, chosen, batch_size=2, codebooks=2, **kw)
    assert [c.shape[1] for c in full] == [8] * len(chosen)
    for f, l in zip(full, low):
      np.testing.assert_array_equal(l, f[:, :2])


class _RecordedDecoding(sampling.Decoding):
  """VALL-E's decoding, keeping what each call was given and what it returned."""

  def __init__(self):
    self.calls = []

  def __call__(self, ar_def, ar_state, nar_def, nar_state, batch, *args, **kwargs):
    made = super().__call__(ar_def, ar_state, nar_def, nar_state, batch, *args, **kwargs)
    self.calls.append((ar_def, ar_state, batch, made))
    return made


def _kv_cache_rows(hlo: str, ar) -> set[int]:
  """The batch sizes of the AR's KV-cache buffers (keys and values: those with dimensions
  besides batch and slots) in a compiled module's text: the rows a device holds when it is
  sharded. The layout is read from `init_cache` with a batch of 97 and 89 slots, sizes no
  other dimension has."""
  rows = set()
  for leaf in jax.tree.leaves(jax.eval_shape(lambda: ar.init_cache(97, 89))):
    if 97 in leaf.shape and 89 in leaf.shape and leaf.ndim > 2:
      dims = ",".join(r"(\d+)" if d == 97 else r"\d+" if d == 89 else str(d)
                      for d in leaf.shape)
      rows |= {int(n) for n in re.findall(rf"\b[a-z]+\d*\[{dims}\]", hlo)}
  return rows


def _sharded_and_one_device_codes(kit, wavs, mesh):
  """Five ragged requests (texts and prompts of different lengths) made together on `mesh`
  and on one device: the codes decoded from each (after checking they are equal), and the
  sharded call's (AR graphdef, AR state, batch, decoding output)."""
  wav, rate = sf.read(wavs["mono"], dtype="float32")
  prompts = [(wav[:int(1.1 * rate)], rate), wavs["stereo"], (wav[:int(1.3 * rate)], rate),
             wavs["mono"], wavs["stereo"]]
  texts = ["Hello there, my friend.", "Good morning.", "The cat sat on the mat today.",
           "Yes.", "We walk to the river."]
  requests = [synthesize.Request(t, p, "A quiet tone.") for t, p in zip(texts, prompts)]
  one_device = _decoded_codes(kit, requests, batch_size=5)
  decoding = _RecordedDecoding()
  sharded = _decoded_codes(kit, requests, batch_size=5, mesh=mesh, decoding=decoding)
  assert len(one_device) == len(sharded) == 5
  assert len({len(c) for c in one_device}) == 5                      # ragged outputs
  for single, split in zip(one_device, sharded):
    np.testing.assert_array_equal(split, single)
  (call,) = decoding.calls
  return call


def test_sharded_synthesis_makes_the_single_device_codes(kit, wavs):
  """Five ragged requests on the default mesh, 8 simulated devices on the data axis: the
  batch is padded to 8 rows and split 1 a device (its arrays, the AR's output, and the KV
  cache inside the compiled sampler), and the padding dropped: the same codes as the five
  made together on one device."""
  mesh = synthesize.synthesis_mesh()
  assert dict(mesh.shape) == {"data": 8, "fsdp": 1, "tensor": 1}
  ar_def, ar_state, batch, (codes, lengths, _) = _sharded_and_one_device_codes(kit, wavs, mesh)
  for array in (batch.phonemes, batch.prompt, batch.prompt_lens, codes, lengths):
    assert len(array.sharding.device_set) == 8 and array.shape[0] == 8
    assert array.sharding.shard_shape(array.shape)[0] == 1

  def compiled_sampler(state, b) -> str:
    return sampling.sample_ar.lower(
        ar_def, state, b.phonemes, b.phoneme_lens, b.prompt[..., 0], b.prompt_lens,
        jax.random.key(0), options=OPTIONS, max_steps=b.max_steps).compile().as_text()
  assert _kv_cache_rows(compiled_sampler(ar_state, batch), kit["ar"]) == {1}
  # The check sees a cache that is not split: the same batch on one device.
  assert _kv_cache_rows(compiled_sampler(*jax.device_get((ar_state, batch))), kit["ar"]) == {8}


def test_synthesis_on_a_data_fsdp_tensor_mesh_makes_the_single_device_codes(kit, wavs):
  """On a 2 x 2 x 2 mesh the rows split over data x fsdp (2 a device) and the parameters
  as training shards them, by their logical axes (the attention heads over tensor, the
  width over fsdp): the same codes as on one device."""
  mesh = synthesize.synthesis_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  _, ar_state, batch, (codes, _, _) = _sharded_and_one_device_codes(kit, wavs, mesh)
  for array in (batch.phonemes, codes):
    assert array.shape[0] == 8 and array.sharding.shard_shape(array.shape)[0] == 2
  placed = [leaf.sharding.spec for leaf in jax.tree.leaves(ar_state)]
  assert placed == jax.tree.leaves(sharding.state_specs(ar_state, mesh),
                                   is_leaf=lambda x: isinstance(x, P))
  assert sharding.logical_to_spec(("layers", "embed", "heads", "kv")) in placed


@pytest.mark.parametrize("sizes, message", [
    ({"data": 16}, r"mesh \{'data': 16, 'fsdp': 1, 'tensor': 1\} needs 16 devices, but 8"),
    ({"tensor": 3}, "8 devices cannot be split"),
    ({"data": 0}, "mesh.data = 0: must be an integer >= 1 or -1"),
    ({"fsdp": -1}, "at most one axis may be -1"),
    ({"batch": 2}, "unknown mesh axes"),
])
def test_bad_mesh_is_one_sentence(sizes, message):
  with pytest.raises(UserError, match=message) as e:
    synthesize.synthesis_mesh(sizes)
  assert "\n" not in str(e.value)


def test_a_mesh_without_a_rest_takes_its_first_devices():
  mesh = synthesize.synthesis_mesh({"data": 2, "tensor": 2})
  assert dict(mesh.shape) == {"data": 2, "fsdp": 1, "tensor": 2}
  assert list(mesh.devices.flat) == jax.local_devices()[:4]


def test_codebooks_out_of_range_is_refused(kit, wavs):
  request = synthesize.Request("Hello.", wavs["mono"], "A tone.")
  for bad in (-1, 9):
    with pytest.raises(UserError, match=r"--codebooks must be in \[1, 8\]"):
      _run(kit, [request], codebooks=bad)


@pytest.mark.parametrize("request_kw, message", [
    (dict(text="  "), "text of the request is empty"),
    (dict(text="... !"), "nothing to pronounce"),
    (dict(prompt_text=""), "prompt text of the request is empty"),
    (dict(prompt="short"), "lasts 0.50 s"),
    (dict(prompt="silent"), "is silent"),
    (dict(prompt="missing"), "(missing)"),
])
def test_bad_input_is_one_sentence(kit, wavs, request_kw, message):
  kw = {"text": "Hello.", "prompt": "mono", "prompt_text": "A tone.", **request_kw}
  kw["prompt"] = wavs.get(kw["prompt"], "/nonexistent/prompt.wav")
  with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
    _run(kit, [synthesize.Request(**kw)])
  assert "\n" not in str(e.value)


def test_read_tsv(tmp_path):
  tsv = tmp_path / "list.tsv"
  tsv.write_text("Hello.\tp.wav\tA tone.\tout/a.wav\nMore words.\tq.wav\n\n", encoding="utf-8")
  a, b = synthesize.read_tsv(str(tsv))
  assert (a.text, a.prompt, a.prompt_text, a.out) == (
      "Hello.", str(tmp_path / "p.wav"), "A tone.", str(tmp_path / "out/a.wav"))
  assert (b.prompt_text, b.out) == ("", "2.wav")
  (tmp_path / "bad.tsv").write_text("only text\n", encoding="utf-8")
  with pytest.raises(UserError, match="line 1 has 1 fields"):
    synthesize.read_tsv(str(tmp_path / "bad.tsv"))


@pytest.mark.parametrize("flags, message", [
    ([], "no checkpoint at"),
    (["--mesh_tensor=0"], "--mesh_tensor=0: must be >= 1 or -1"),
    (["--mesh_data=2"], "needs 2 devices, but 1 are available")])
def test_cli_errors_are_one_line(tmp_path, flags, message):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  result = subprocess.run(
      [sys.executable, "-m", "valle_jax.cli", "synthesize", f"--checkpoint={tmp_path}/none",
       "--text=Hello.", f"--prompt={tmp_path}/p.wav", *flags],
      capture_output=True, text=True, env=env, timeout=120)
  assert result.returncode == 2, result.stderr
  lines = [l for l in result.stderr.splitlines() if "error" in l]
  assert len(lines) == 1 and message in lines[0], result.stderr


def test_cli_with_a_trained_checkpoint(trained_run, wavs, tmp_path):
  """`valle-jax synthesize` on a real training run: loads models, symbols and codec from
  the checkpoint and writes a 24 kHz wav."""
  from valle_jax import cli  # pylint: disable=g-import-not-at-top
  out = str(tmp_path / "out.wav")
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["valle-jax", "synthesize", f"--checkpoint={trained_run}", "--text=Good morning.",
              f"--prompt={wavs['mono']}", "--prompt_text=A quiet tone.", f"--out={out}",
              "--top_k=20"])
  assert exit_info.value.code in (0, None)
  wav, rate = sf.read(out)
  assert rate == 24_000 and len(wav) > 0 and np.isfinite(wav).all()


def test_training_pairs_and_zero_shot_requests_share_one_phoneme_layout():
  """A same-speaker training pair (utterance A, then B) and the zero-shot request "say B's
  text in the voice of A" give the same phoneme ids: A's transcript without its final ".",
  a word boundary, then B's text with its own punctuation."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from valle_jax import data  # pylint: disable=g-import-not-at-top
  symbols = text.SymbolTable.default()
  texts = ("Go home, now.", "The rain stopped!")
  records = [{"speaker": b"s", "phonemes": text.text_to_ids(t, symbols),   # as data prep
              "codes": np.zeros((40 + 10 * i, 8), np.int16)} for i, t in enumerate(texts)]
  cfg = ml_collections.ConfigDict({
      "frame_buckets": (200,), "phoneme_buckets": (64,), "max_tokens": 800,
      "max_batch_size": 4, "prompt_seconds": 1.0, "nar_prompt": "prefix",
      "same_speaker_pairs": 1.0})
  plan = data.BatchPlan(data.scan_lengths(records, progress=False), cfg, seed=0)
  loader = data.BatchLoader(records, plan, cfg, kind="ar", num_codebooks=8, frame_rate=75.0,
                            symbols=symbols)
  batch, examples = loader(0)["ar"], plan.batch(0)[1]
  row = np.flatnonzero((examples[:, 0] == 0) & (examples[:, 1] == 1))[0]
  trained = batch["phonemes"][row, :batch["phoneme_lens"][row]]
  request = synthesize.Request(texts[1], "unused.wav", prompt_text=texts[0])
  asked, heard = synthesize.request_phonemes(request, symbols, "en-us")
  np.testing.assert_array_equal(trained, asked)
  laid_out = symbols.decode(asked)
  assert laid_out[heard - 1] == text.WORD and "." not in laid_out[:heard]
  assert "," in laid_out[:heard] and laid_out[-1] == "!"       # other punctuation is kept
  assert laid_out[heard:] == symbols.decode(records[1]["phonemes"])


def test_a_nar_trained_on_segment_prompts_reads_the_text_alone(kit, wavs, monkeypatch):
  """A NAR trained with data.nar_prompt = "segment" (or "other_utterance") only ever read its
  target's text: zero-shot, it gets the text's phonemes without the prompt's transcript; a
  "prefix" NAR gets both. Runs from before nar_prompt map to their mode."""
  seen = []
  decode_nar = sampling.decode_nar

  def recording(graphdef, state, phonemes, phoneme_lens, *args, **kw):
    seen.append((np.asarray(phonemes), np.asarray(phoneme_lens)))
    return decode_nar(graphdef, state, phonemes, phoneme_lens, *args, **kw)
  monkeypatch.setattr(sampling, "decode_nar", recording)
  request = synthesize.Request("Good morning.", wavs["mono"], "A quiet tone.")
  _run(kit, [request], nar_prompt="segment")
  _run(kit, [request])
  (alone, alone_lens), (joined, joined_lens) = seen
  words, heard = synthesize.request_phonemes(request, kit["symbols"], "en-us")
  np.testing.assert_array_equal(joined[0, :joined_lens[0]], words)
  assert alone_lens[0] == len(words) - heard
  np.testing.assert_array_equal(alone[0, :alone_lens[0]], words[heard:])
  assert not alone[0, alone_lens[0]:].any()
  import ml_collections  # pylint: disable=g-import-not-at-top
  for data, mode in (({"nar_prompt": "segment"}, "segment"), ({}, "prefix"),
                     ({"prompt_from_other_utterance": True}, "other_utterance")):
    config = ml_collections.ConfigDict({"data": data})
    assert synthesize.trained_nar_prompt(config) == mode

