"""The aligned variant (valle_jax/variants/aligned, docs/variants/aligned.md): forced
alignment, the pointer AR and the codebook-1 NAR, their batches, the pointer's sampler
controller, the variant's decoding, and a run of it through VALL-E's training, checkpoints
and synthesis (its recipe); and that the core never imports it."""
import functools
import json
import math
import os
import pickle
import shutil
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import soundfile as sf
from flax import nnx

from configs import tiny
from valle_jax import data, models, recipe, sampling, synthesize, text
from valle_jax.errors import UserError
from valle_jax.variants import aligned
from valle_jax.variants.aligned import align
from valle_jax.variants.aligned import config as aligned_config
from valle_jax.variants.aligned import data as aligned_data
from valle_jax.variants.aligned import losses as aligned_losses
from valle_jax.variants.aligned import models as aligned_models
from valle_jax.variants.aligned import sampling as aligned_sampling

NUM_PHONEMES, V = 8, 64


def _planted(n=40, seed=0):
  """Records whose phoneme p emits codes in its own band [8p, 8p + 8) (10% noise anywhere),
  with random durations of 1-7 frames: the true alignment is known (no phoneme follows
  itself, which would make the boundary between the two unknowable)."""
  rng = np.random.default_rng(seed)
  records, truth = [], []
  for _ in range(n):
    steps = rng.integers(1, NUM_PHONEMES, int(rng.integers(4, 12)))
    phonemes = (np.cumsum(steps) % NUM_PHONEMES).astype(np.int32)
    durations = rng.integers(1, 8, len(phonemes))
    path = np.repeat(np.arange(len(phonemes)), durations).astype(np.int32)
    codes = 8 * phonemes[path][:, None] + rng.integers(0, 8, (len(path), 2))
    noisy = rng.random(codes.shape) < 0.1
    codes = np.where(noisy, rng.integers(0, V, codes.shape), codes)
    records.append({"phonemes": phonemes, "codes": codes})
    truth.append(path)
  return records, truth


# ------------------------------------------------------------------ alignment


def test_viterbi_is_a_monotonic_path_through_every_phoneme():
  rng = np.random.default_rng(1)
  path = align.viterbi(rng.normal(size=(30, 9)))
  assert path[0] == 0 and path[-1] == 8
  assert set(np.diff(path).tolist()) <= {0, 1}
  with pytest.raises(ValueError, match="cannot be aligned"):
    align.viterbi(np.zeros((3, 5)))


def test_viterbi_training_recovers_a_planted_alignment():
  """From an even split, Viterbi training finds the true phoneme of >= 95% of frames (the
  even split: far fewer); a record with more phonemes than frames is counted, not aligned."""
  records, truth = _planted()
  short = {"phonemes": np.arange(6, dtype=np.int32), "codes": np.zeros((4, 2), np.int64)}
  paths, log_p, unaligned = align.fit_alignments(records + [short], NUM_PHONEMES, V,
                                                 progress=False)
  assert unaligned == 1
  frames = np.concatenate(truth)
  found = np.mean(np.concatenate(paths[:-1]) == frames)
  even = np.mean(np.concatenate([aligned_data.even_split(len(p), p.max() + 1) for p in truth]) == frames)
  assert found >= 0.95 > even + 0.2, (found, even)
  assert log_p.shape == (2, NUM_PHONEMES, V)


def test_codebooks_coded_once_per_utterance_are_not_observed(tiny_dataset, tmp_path):
  """A codec whose codebook 2 is one code per utterance (the offline codec's voice code):
  `align_dataset` aligns on codebook 1 alone, exactly as `fit_alignments` observing only it,
  which differs from observing both. With nothing left to observe the error says what to do."""
  assert align.observed_codebooks(2) == (0, 1)
  assert align.observed_codebooks(3, (1,)) == (0, 2)
  with pytest.raises(UserError, match="--num_codebooks"):
    align.observed_codebooks(1, (0,))
  path = str(tmp_path / "dataset")
  shutil.copytree(tiny_dataset, path)
  with open(os.path.join(path, "codec.json"), encoding="utf-8") as f:
    description = json.load(f)
  with open(os.path.join(path, "codec.json"), "w", encoding="utf-8") as f:
    json.dump({**description, "utterance_codebooks": [1]}, f)
  cfg = align.AlignConfig(iterations=2)
  align.align_dataset(path, cfg, progress=False)
  dataset = data.open_dataset(path)
  source = dataset.split("train")
  records = [source[i] for i in range(len(source))]
  num_phonemes = len(text.SymbolTable.load(dataset.symbols_path).symbols)
  codebook_size = int(description["codebook_size"])
  first_only, _, _ = align.fit_alignments(records, num_phonemes, codebook_size, cfg, False,
                                          codebooks=(0,))
  both, _, _ = align.fit_alignments(records, num_phonemes, codebook_size, cfg, False)
  written = aligned_data.load_alignments(dataset, "train")
  for i, path_i in enumerate(first_only):
    np.testing.assert_array_equal(written[i], path_i)
  assert any((a != b).any() for a, b in zip(first_only, both))


def test_pointer_batches_split_the_partner_evenly():
  """With alignments the AR batch carries `phoneme_of_frame`: a pair's partner (the prompt)
  split evenly over its phonemes, then the utterance's alignment after them, and
  `target_start` at the utterance's first frame."""
  records, truth = _planted(12)
  for i, r in enumerate(records):
    r["speaker"] = f"s{i % 2}".encode()
    r["codes"] = np.pad(r["codes"], [(0, 0), (0, 6)])
  alignments = aligned_data.Alignments(np.concatenate(truth),
                               np.cumsum([0] + [len(t) for t in truth]))
  cfg = ml_collections.ConfigDict({
      "frame_buckets": (200,), "phoneme_buckets": (64,), "max_tokens": 800,
      "max_batch_size": 4, "prompt_seconds": 1.0, "nar_prompt": "prefix",
      "same_speaker_pairs": 1.0})
  plan = data.BatchPlan(data.scan_lengths(records, progress=False), cfg, seed=0,
                        crop_long=False)
  symbols = text.SymbolTable.default()
  loader = aligned_data.AlignedBatchLoader(records, plan, cfg, kind="ar", num_codebooks=8,
                                           frame_rate=75.0, alignments=alignments,
                                           symbols=symbols)
  batch = loader(0)["ar"]
  for row, (partner, index) in enumerate(plan.batch(0)[1]):
    if index < 0:
      continue
    first = records[partner]
    _, heard = text.join_prompt_and_text(first["phonemes"], records[index]["phonemes"],
                                         symbols)
    expected = np.concatenate([aligned_data.even_split(len(first["codes"]), heard),
                               truth[index] + heard])
    np.testing.assert_array_equal(batch["phoneme_of_frame"][row, :len(expected)], expected)
    assert batch["target_start"][row] == len(first["codes"])


def test_nar_codebook1_batches_carry_each_target_frames_phoneme():
  """The variant's NAR also learns codebook 1 (stage 0, one weight per codebook 1..Q) and
  each target frame carries its phoneme from the alignments: a pair's partner's alignment
  (clipped to the phonemes before the utterance's, the partner's transcript as synthesis
  joins it), then the utterance's (after those), less the frames the prompt took; a padding
  row carries none."""
  rng = np.random.default_rng(0)
  records = [{"id": f"u{i}".encode(), "speaker": f"s{i % 3}".encode(),
              "phonemes": rng.integers(1, 50, int(rng.integers(5, 30))).astype(np.int32),
              "codes": rng.integers(0, 1024, (int(rng.integers(40, 140)), 8)).astype(np.int16)}
             for i in range(23)]
  cfg = ml_collections.ConfigDict({
      "frame_buckets": (100, 200, 300), "phoneme_buckets": (32, 64), "max_tokens": 800,
      "max_batch_size": 6, "prompt_seconds": 1.0, "nar_prompt": "prefix",
      "same_speaker_pairs": 1.0, "nar_stage_weights": (2, 0, 1, 0, 0, 0, 0, 0)})
  plan = data.BatchPlan(data.scan_lengths(records, progress=False), cfg, seed=0,
                        crop_long=False)
  symbols = text.SymbolTable.default()
  rows = [aligned_data.even_split(len(r["codes"]), len(r["phonemes"])) for r in records]
  alignments = aligned_data.Alignments(np.concatenate(rows),
                                       np.concatenate([[0], np.cumsum([len(a) for a in rows])]))
  loader = aligned_data.AlignedBatchLoader(records, plan, cfg, kind="nar", num_codebooks=8,
                                           frame_rate=75.0, alignments=alignments,
                                           symbols=symbols)
  stages, pairs, padding = [], 0, 0
  for index in range(plan.batches_per_epoch):
    nar = loader(index)["nar"]
    stages.append(nar["stage"][nar["code_lens"] > 0])
    for row, (partner, member) in enumerate(plan.batch(index)[1]):
      if member < 0:
        padding += 1
        assert nar["code_lens"][row] == 0 and not nar["frame_phonemes"][row].any()
        continue
      own = alignments[member]
      if partner >= 0:
        pairs += 1
        _, heard = text.join_prompt_and_text(records[partner]["phonemes"],
                                             records[member]["phonemes"], symbols)
        own = np.concatenate([np.minimum(alignments[partner], heard - 1), own + heard])
      n, p = nar["code_lens"][row], nar["prompt_lens"][row]
      np.testing.assert_array_equal(nar["frame_phonemes"][row, :n], own[p:p + n])
      assert not nar["frame_phonemes"][row, n:].any()
  assert pairs > 0 and padding > 0
  stages = np.concatenate(stages)
  assert set(stages.tolist()) == {0, 2}
  assert 0.5 < np.mean(stages == 0) < 0.85
  bad = ml_collections.ConfigDict({**cfg.to_dict(), "nar_stage_weights": (1,) * 7})
  with pytest.raises(UserError, match=r"needs 8 .*codebooks 1\.\.8"):
    aligned_data.AlignedBatchLoader(records, plan, bad, kind="nar", num_codebooks=8,
                                    frame_rate=75.0, alignments=alignments, symbols=symbols)


def test_long_examples_are_left_out_not_cropped():
  """The variant's recipe plans with `crop_long=False`: an example longer than the largest
  bucket, which a crop's alignment would not follow, is left out; a cropping plan is
  refused."""
  records, truth = _planted(6)
  for r in records:
    r["speaker"] = b"s"
  records[0]["codes"] = np.tile(records[0]["codes"], (40, 1))[:250]     # past 200 frames
  alignments = aligned_data.Alignments(np.concatenate(truth),
                                       np.cumsum([0] + [len(t) for t in truth]))
  cfg = ml_collections.ConfigDict({
      "frame_buckets": (200,), "phoneme_buckets": (64,), "max_tokens": 800,
      "max_batch_size": 4, "prompt_seconds": 1.0, "nar_prompt": "prefix"})
  lengths = data.scan_lengths(records, progress=False)
  assert aligned.RECIPE.crop_long is False and recipe.VALLE.crop_long is True
  plan = data.BatchPlan(lengths, cfg, seed=0, crop_long=aligned.RECIPE.crop_long)
  assert plan.dropped == 1 and not plan.cropped.any()
  loader = aligned_data.AlignedBatchLoader(records, plan, cfg, kind="ar", num_codebooks=2,
                                           frame_rate=75.0, alignments=alignments)
  seen = np.concatenate([loader(i)["index"] for i in range(plan.batches_per_epoch)])
  assert 0 not in seen.tolist() and set(range(1, 6)) <= set(seen.tolist())
  with pytest.raises(ValueError, match="crop_long=False"):
    aligned_data.AlignedBatchLoader(records, data.BatchPlan(lengths, cfg, seed=0), cfg,
                                    kind="ar", num_codebooks=2, frame_rate=75.0,
                                    alignments=alignments)


# ---------------------------------------------------------------------------- models

B, L, T, P, Q = 3, 7, 12, 5, 8
PHONEME_LENS = np.array([7, 5, 3])
CODE_LENS = np.array([12, 9, 4])
PROMPT_LENS = np.array([5, 3, 1])


@pytest.fixture(scope="module")
def cfg():
  return tiny.get_config().model


@pytest.fixture(scope="module")
def batch(cfg):
  """A model batch whose frames are split evenly over each example's phonemes
  (`phoneme_of_frame`; `frame_phonemes` over L phonemes and T frames), the first 2 frames
  of each example a 'prompt' (target_start)."""
  rng = np.random.default_rng(0)
  b = models.example_batch(cfg, B, L, T)
  b["frame_phonemes"] = np.asarray(aligned_models.prompt_pointers(
      jnp.full((B,), L), jnp.full((B,), T), T))
  b["phoneme_lens"], b["code_lens"] = PHONEME_LENS, CODE_LENS
  b["prompt_codes"] = rng.integers(0, cfg.codebook_size, (B, P, Q))
  b["prompt_lens"] = PROMPT_LENS
  b["stage"] = np.array([1, 4, 7])
  frames = np.zeros((B, T), np.int32)
  for i in range(B):
    n, l = int(CODE_LENS[i]), int(PHONEME_LENS[i])
    frames[i, :n] = aligned_data.even_split(n, l)
  b["phoneme_of_frame"] = frames
  b["target_start"] = np.array([2, 2, 2])
  return {k: jnp.asarray(v) for k, v in b.items()}


@pytest.fixture(scope="module")
def pointer_model(cfg):
  return aligned_models.PointerARModel(cfg, rngs=nnx.Rngs(5))


def _nar_args(batch, **changes):
  b = {**batch, **changes}
  return (b["phonemes"], b["phoneme_lens"], b["prompt_codes"], b["prompt_lens"], b["codes"],
          b["code_lens"], b["stage"])


def test_frames_since_and_until_their_phonemes_boundaries():
  since, until = aligned_models.frames_since_and_until(
      jnp.array([[3, 3, 3, 4, 4, 5, 0, 0], [0, 0, 1, 1, 1, 1, 1, 1]]), jnp.array([6, 8]))
  np.testing.assert_array_equal(since[0, :6], [0, 1, 2, 0, 1, 0])
  np.testing.assert_array_equal(until[0, :6], [2, 1, 0, 1, 0, 0])
  np.testing.assert_array_equal(since[1], [0, 1, 0, 1, 2, 3, 4, 5])
  np.testing.assert_array_equal(until[1], [1, 0, 5, 4, 3, 2, 1, 0])


def test_nar_codebook1_reads_when_each_frame_is_spoken_and_no_target_code(cfg, batch):
  """Stage 0 (codebook 1) reads no target code, and each valid frame reads its phoneme
  (`frame_phonemes`): moving a boundary by one frame moves that example's logits, changing
  padding frames' entries moves none; without `frame_phonemes` it is an error, and the
  loss learns stage 0 like any other."""
  model = aligned_models.TimedNARModel(cfg, rngs=nnx.Rngs(1))
  graphdef, state = nnx.split(model)
  stage0 = jnp.zeros((B,), jnp.int32)

  @jax.jit
  def apply(codes, frame_phonemes):
    return nnx.merge(graphdef, state)(*_nar_args(batch, codes=codes, stage=stage0),
                                      frame_phonemes=frame_phonemes)
  timing = batch["frame_phonemes"]
  logits = apply(batch["codes"], timing)
  assert logits.shape == (B, T, cfg.codebook_size)
  np.testing.assert_array_equal(apply((batch["codes"] + 11) % 1024, timing), logits)
  valid = jnp.arange(T)[None] < batch["code_lens"][:, None]
  padding_changed = apply(batch["codes"], jnp.where(valid, timing, 2))
  moved = apply(batch["codes"], timing.at[:, 1].set(timing[:, 0] + 1))
  for b in range(B):
    n = int(batch["code_lens"][b])
    np.testing.assert_array_equal(padding_changed[b, :n], logits[b, :n])
    assert not np.allclose(moved[b, :n], logits[b, :n])
  with pytest.raises(ValueError, match="frame_phonemes"):
    model(*_nar_args(batch, stage=stage0))
  _, metrics = aligned_losses.timed_nar_loss(model, {**batch, "stage": stage0})
  np.testing.assert_allclose(metrics["count_per_codebook"][0], float(np.sum(CODE_LENS)))


def test_pointer_inputs_and_targets():
  """Slot t carries frame t's phoneme (the last phoneme at EOS and after); advance is 1
  where the next frame is in the next phoneme and after the last frame; only target frames
  (from target_start, before code_len) are learnt."""
  frames = jnp.array([[0, 0, 1, 1, 1, 2], [0, 1, 1, 0, 0, 0]])
  pointers, advance, mask = aligned_models.pointer_inputs_and_targets(
      frames, jnp.array([6, 3]), jnp.array([3, 2]), jnp.array([2, 0]))
  np.testing.assert_array_equal(pointers, [[0, 0, 1, 1, 1, 2, 2], [0, 1, 1, 1, 1, 1, 1]])
  np.testing.assert_array_equal(advance[0, :6], [0, 1, 0, 0, 1, 1])
  np.testing.assert_array_equal(advance[1, :3], [1, 0, 1])
  np.testing.assert_array_equal(mask, [[0, 0, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0, 0]])


def test_prompt_pointers_split_the_prompt_evenly():
  pointers = aligned_models.prompt_pointers(jnp.array([3, 2]), jnp.array([6, 3]), 8)
  np.testing.assert_array_equal(pointers, [[0, 0, 1, 1, 2, 2, 3, 3], [0, 1, 1, 2, 2, 2, 2, 2]])


def test_ar_pointer_reads_the_pointed_phoneme(pointer_model, batch):
  """Changing the phoneme under slot t's pointer changes the logits from slot t on (and the
  advance logits); the loss learns the advance on target frames only."""
  inputs, _, lens = models.ar_inputs_and_targets(batch["codes"][..., 0], batch["code_lens"],
                                                 pointer_model.codebook_size)
  pointers, _, _ = aligned_models.pointer_inputs_and_targets(
      batch["phoneme_of_frame"], batch["code_lens"], batch["phoneme_lens"],
      batch["target_start"])
  apply = nnx.jit(lambda m, ptr: m(batch["phonemes"], batch["phoneme_lens"], inputs, lens,
                                   phoneme_pointers=ptr, return_advance=True))
  logits, advance = apply(pointer_model, pointers)
  assert advance.shape == logits.shape[:2]
  moved = pointers.at[0, 6].set((pointers[0, 6] + 3) % int(PHONEME_LENS[0]))
  logits2, advance2 = apply(pointer_model, moved)
  np.testing.assert_allclose(logits2[0, :6], logits[0, :6], atol=1e-6)
  assert float(jnp.abs(logits2[0, 6] - logits[0, 6]).max()) > 1e-4
  assert float(jnp.abs(advance2[0, 6] - advance[0, 6])) > 1e-5
  np.testing.assert_allclose(logits2[1:], logits[1:], atol=1e-6)
  loss, m = nnx.jit(aligned_losses.pointer_ar_loss)(pointer_model, batch)
  assert np.isfinite(float(loss)) and np.isfinite(float(m["aux"]["advance"]["loss_sum"]))
  assert float(m["aux"]["advance"]["count"]) == sum(int(n) - 2 for n in CODE_LENS)
  with pytest.raises(ValueError, match="alignments"):
    aligned_losses.pointer_ar_loss(
        pointer_model, {k: v for k, v in batch.items() if k != "phoneme_of_frame"})


def test_ar_pointer_kv_cache_matches_full_forward(pointer_model, batch):
  """Prefill with prompt pointers, then decode moving the pointer as the full forward's
  pointers move: every step's code and advance logits equal the full forward's."""
  model = pointer_model
  inputs, _, lens = models.ar_inputs_and_targets(batch["codes"][..., 0], batch["code_lens"],
                                                 model.codebook_size)
  pointers, _, _ = aligned_models.pointer_inputs_and_targets(
      batch["phoneme_of_frame"], batch["code_lens"], batch["phoneme_lens"],
      batch["target_start"])
  full, full_advance = nnx.jit(lambda m: m(batch["phonemes"], batch["phoneme_lens"], inputs,
                                           lens, phoneme_pointers=pointers,
                                           return_advance=True))(model)
  prompt_lens = jnp.array([3, 1, 2])
  num_steps = int(jnp.min(lens - prompt_lens))
  prompt = inputs[:, :int(prompt_lens.max())]
  rows = jnp.arange(B)

  @nnx.jit
  def run(model):
    cache = model.init_cache(B, L + inputs.shape[1] + 4)
    logits, cache = model.prefill(batch["phonemes"], batch["phoneme_lens"], prompt,
                                  prompt_lens, cache, pointers[:, :prompt.shape[1]])
    steps, adv = [logits], [cache["advance_logit"]]
    for i in range(num_steps - 1):
      slot = prompt_lens + i
      moved = pointers[rows, slot] > pointers[rows, slot - 1]
      logits, cache = model.decode_step(inputs[rows, slot], cache, advance=moved)
      steps.append(logits)
      adv.append(cache["advance_logit"])
    return jnp.stack(steps, axis=1), jnp.stack(adv, axis=1)

  cached, cached_advance = run(model)
  for b in range(B):
    p = int(prompt_lens[b])
    np.testing.assert_allclose(cached[b], full[b, p - 1:p - 1 + num_steps], atol=2e-5,
                               rtol=1e-5)
    np.testing.assert_allclose(cached_advance[b], full_advance[b, p - 1:p - 1 + num_steps],
                               atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("field, value", [("ar_group_size", 2), ("ar_bos", False)])
def test_ar_pointer_needs_group_size_1_and_bos(cfg, field, value):
  c = ml_collections.ConfigDict(cfg.to_dict())
  c[field] = value
  with pytest.raises(ValueError, match=field):
    aligned_models.PointerARModel(c, rngs=nnx.Rngs(0))


# --------------------------------------------------------------------------- sampling

SAMPLE_PHONEME_LENS = (7, 5, 3)
HEARD = (3, 2, 1)            # the prompt transcripts' phonemes
BUCKETS = {"phoneme_buckets": (16, 32), "prompt_buckets": (8,)}
VOCAB = 1024
EOS = VOCAB


def _sample_inputs(seed=0):
  rng = np.random.default_rng(seed)
  phonemes = [rng.integers(1, 128, n) for n in SAMPLE_PHONEME_LENS]
  prompts = [rng.integers(0, VOCAB, (n, 8)) for n in (5, 3, 1)]
  return phonemes, prompts


def _pointer_ar(eos_bias: float, advance_bias: float | None = None):
  model = aligned_models.PointerARModel(tiny.get_config().model, rngs=nnx.Rngs(7))
  model.head_bias[...] = model.head_bias[...].at[EOS].add(eos_bias)
  if advance_bias is not None:
    model.advance_bias[...] = jnp.full((1,), advance_bias)
  return model


def _sample_pointer(model, options, controller, key=0, **kwargs):
  batch = sampling.prepare_batch(*_sample_inputs(), 1, options, prompt_phoneme_lens=HEARD,
                                 **BUCKETS)
  inputs = kwargs.pop("controller_inputs", batch.prompt_phoneme_lens)
  return sampling.sample_ar(*nnx.split(model), batch.phonemes, batch.phoneme_lens,
                            batch.prompt[..., 0], batch.prompt_lens, jax.random.key(key),
                            options=options, max_steps=batch.max_steps,
                            controller=controller, controller_inputs=inputs, **kwargs)


def test_pointer_model_speaks_to_the_end_of_its_text():
  """The pointer starts at the target text (after the prompt's phonemes) and EOS is
  allowed only on the last phoneme: an AR that always moves on and always wants EOS makes
  exactly L - 1 - P frames; one that never moves on never ends. The controller's output
  is the pointer's path."""
  model = _pointer_ar(30.0)
  options = sampling.SampleOptions(top_k=5, max_frames_per_phoneme=2.0)
  controller = aligned_sampling.PointerController()
  lengths = {}
  for name, bias in (("moves on", 30.0), ("stays", -30.0)):
    model.advance_bias[...] = jnp.full((1,), bias)
    out = _sample_pointer(model, options, controller)
    lengths[name] = (np.asarray(out.lengths), np.asarray(out.hit_limit))
    for row, h in enumerate(HEARD):   # the pointer's path: one phoneme a frame, or the first
      n = lengths[name][0][row]
      path = np.asarray(out.controlled[row])
      np.testing.assert_array_equal(path[:n], h + np.arange(n) if bias > 0 else h)
      assert not path[n:].any()
  expected = [n - 1 - h for n, h in zip(SAMPLE_PHONEME_LENS, HEARD)]
  np.testing.assert_array_equal(lengths["moves on"][0], expected)
  assert not lengths["moves on"][1].any()
  assert lengths["stays"][1].all()          # never on the last phoneme: the limit stops it
  with pytest.raises(ValueError, match="controller_inputs"):
    _sample_pointer(model, options, controller, controller_inputs=None)
  with pytest.raises(ValueError, match="use_cache"):
    _sample_pointer(model, sampling.SampleOptions(top_k=5, max_frames_per_phoneme=2.0,
                                                  use_cache=False), controller)
  plain = models.ARModel(tiny.get_config().model, rngs=nnx.Rngs(7))
  with pytest.raises(ValueError, match="PointerARModel"):
    _sample_pointer(plain, options, controller)


@pytest.mark.parametrize("advance_bias, eos_bias", [(-30.0, 30.0), (30.0, -30.0)],
                         ids=["max moves on", "max ends"])
def test_pointer_max_dwell_follows_the_prompts_speaking_rate(advance_bias, eos_bias):
  """`max_dwell` moves on an AR that never does, at 2 x the prompt's frames per phoneme:
  ceil(2 x 5/3, 2 x 3/2, 2 x 1/1) = 4, 3, 2 frames on each phoneme before the last (where
  the AR, always wanting EOS, stops). On the last phoneme it ends an AR that always moves
  on but never wants EOS after as many frames."""
  model = _pointer_ar(eos_bias, advance_bias=advance_bias)
  options = sampling.SampleOptions(top_k=5, max_frames_per_phoneme=2.0)
  out = _sample_pointer(model, options, aligned_sampling.PointerController(max_dwell=2.0))
  before_last = np.array([n - 1 - h for n, h in zip(SAMPLE_PHONEME_LENS, HEARD)])  # 3, 2, 1
  bound = np.array([4, 3, 2])
  expected = before_last * bound if eos_bias > 0 else before_last + bound
  np.testing.assert_array_equal(np.asarray(out.lengths), expected)
  assert not np.asarray(out.hit_limit).any()


@pytest.mark.parametrize("advance, advance_prob, frames, wants_eos", [
    ("median", 0.3, 2, True), ("median", 0.2, 4, True), ("median", 0.1, 7, False),
    ("mean", 0.3, 3, True), ("mean", 0.2, 5, False), ("mean", 0.1, 10, True)])
def test_deterministic_pointer_moves_on_at_the_median_or_mean_length(
    advance, advance_prob, frames, wants_eos):
  """`advance` "median" / "mean" moves on once prod (1 - p) over the phoneme's frames falls
  to 1/2 / 1/e: with a constant p, ceil(log 1/2 / log(1 - p)) or ceil(-1 / log(1 - p))
  frames on every phoneme, whatever the rng. On the last phoneme an AR that always wants
  EOS stops at once; one that never does, when the pointer would move on."""
  model = _pointer_ar(30.0 if wants_eos else -30.0,
                      advance_bias=math.log(advance_prob / (1 - advance_prob)))
  model.advance_kernel[...] = jnp.zeros_like(model.advance_kernel[...])
  options = sampling.SampleOptions(top_k=5, max_frames_per_phoneme=12.0)
  controller = aligned_sampling.PointerController(advance=advance)
  before_last = np.array([n - 1 - h for n, h in zip(SAMPLE_PHONEME_LENS, HEARD)])  # 3, 2, 1
  for seed in (0, 1):
    out = _sample_pointer(model, options, controller, key=seed)
    spoken = before_last + (0 if wants_eos else 1)
    np.testing.assert_array_equal(np.asarray(out.lengths), spoken * frames)
    assert not np.asarray(out.hit_limit).any()
    for row, h in enumerate(HEARD):
      path = np.asarray(out.controlled[row])[:spoken[row] * frames]
      np.testing.assert_array_equal(path, h + np.arange(spoken[row]).repeat(frames))


def test_pointer_sampling_in_a_growing_cache_equals_one_cache():
  """The pointer controller reads and moves the model's own cache entries (pointer,
  advance logit): decoding in small segments of a growing cache (`cache_buckets`; the
  prefill fills 16 + 1 + 8 = 25 slots) draws the same frames and the same pointer path as
  in one cache of the whole room: one sequence ending with EOS after crossing three
  segments' boundaries (steps 7, 12 and 18), two at their limits."""
  model = _pointer_ar(3.0, advance_bias=-3.0)
  options = sampling.SampleOptions(max_frames_per_phoneme=4.0)
  controller = aligned_sampling.PointerController()
  small, one = (_sample_pointer(model, options, controller, key=1, cache_buckets=buckets)
                for buckets in ((32, 37, 43, 49, 56), ()))
  np.testing.assert_array_equal(small.hit_limit, [False, True, True])
  assert 18 < small.lengths[0] < 4 * SAMPLE_PHONEME_LENS[0]
  for name in ("codes", "lengths", "hit_limit", "controlled"):
    np.testing.assert_array_equal(getattr(small, name), getattr(one, name), err_msg=name)


def test_pointer_options_are_checked():
  with pytest.raises(ValueError, match="max_dwell"):
    aligned_sampling.PointerController(max_dwell=-1.0)
  with pytest.raises(ValueError, match="advance must be one of"):
    aligned_sampling.PointerController(advance="mode")
  cfg = aligned_config.get_config()
  cfg.pointer.advance = "mode"
  with pytest.raises(UserError, match="config.pointer"):
    aligned_sampling.decoding(cfg, {})
  cfg.pointer.advance = "median"
  decoding = aligned_sampling.decoding(cfg, {"utterance_codebooks": [1]})
  assert decoding.controller == aligned_sampling.PointerController(advance="median")
  assert decoding.copied_codebooks == (1,)


def test_nar_makes_codebook1_on_the_given_timing_and_copies_the_voice_code():
  """The variant's NAR decoding makes codebook 1 as the greedy stage-0 forward on
  `frame_phonemes` and copies the voice code (codebook 2) from the prompt's first frame."""
  cfg = tiny.get_config().model
  nar = aligned_models.TimedNARModel(cfg, rngs=nnx.Rngs(5))
  phonemes, prompts = _sample_inputs(4)
  batch = sampling.prepare_batch(phonemes, prompts, 1, sampling.SampleOptions(), **BUCKETS)
  t, b = 12, len(phonemes)
  target_lens = np.array([12, 7, 4])
  timing = np.minimum(np.arange(t)[None] // 3 + 2,
                      np.asarray(SAMPLE_PHONEME_LENS)[:, None] - 1)
  decode = functools.partial(aligned_sampling.decode_nar, *nnx.split(nar), batch.phonemes,
                             batch.phoneme_lens, batch.prompt, batch.prompt_lens, target_lens,
                             timing)
  out = np.asarray(decode((1,), 2))
  logits = nnx.jit(lambda m, *a, **k: m(*a, **k))(
      nar, batch.phonemes, batch.phoneme_lens, batch.prompt, batch.prompt_lens,
      np.zeros((b, t, 8), np.int32), target_lens, np.zeros((b,), np.int32),
      frame_phonemes=timing)
  for i, n in enumerate(target_lens):
    np.testing.assert_array_equal(out[i, :n, 0], np.argmax(np.asarray(logits[i, :n]), -1))
    np.testing.assert_array_equal(out[i, :n, 1], batch.prompt[i, 0, 1])
    assert not out[i, n:].any()
  every = np.asarray(decode((), 3))          # nothing copied: codebook 2 is predicted
  np.testing.assert_array_equal(every[..., 0], out[..., 0])
  assert (every[..., 1] != out[..., 1]).any()
  with pytest.raises(ValueError, match="copied_codebooks"):
    decode((0,), 2)


def test_decoding_runs_the_nar_over_the_ar_output_not_its_room():
  """`AlignedDecoding` gives the NAR the AR's longest output rounded up to a
  `sampling.NAR_FRAME_BUCKETS` size, as VALL-E's `Decoding` does, not all `max_steps` frames
  the AR had room for: the same codes as decoding the whole room, padded back to its
  shape."""
  ar = _pointer_ar(0.0)
  nar = aligned_models.TimedNARModel(tiny.get_config().model, rngs=nnx.Rngs(5))
  options = sampling.SampleOptions(top_k=20)
  controller = aligned_sampling.PointerController(max_dwell=2.0)
  batch = sampling.prepare_batch(*_sample_inputs(), 1, options, prompt_phoneme_lens=HEARD,
                                 **BUCKETS)
  key = jax.random.key(3)
  decoding = aligned_sampling.AlignedDecoding(controller, copied_codebooks=(1,))
  codes, lengths, _ = decoding(*nnx.split(ar), *nnx.split(nar), batch, key, options)
  out = _sample_pointer(ar, options, controller, key=3)
  room = batch.max_steps
  assert len(set(np.asarray(out.lengths).tolist())) > 1                 # ragged outputs
  assert sampling.nar_frames(int(np.max(out.lengths)), room) < room     # the NAR ran shorter
  whole = aligned_sampling.decode_nar(*nnx.split(nar), batch.phonemes, batch.phoneme_lens,
                                      batch.prompt, batch.prompt_lens, out.lengths,
                                      out.controlled, (1,))
  assert codes.shape == whole.shape == (3, room, 8)
  np.testing.assert_array_equal(lengths, out.lengths)
  np.testing.assert_array_equal(codes, whole)


# ------------------------------------------------------------------------- synthesis


@pytest.fixture(scope="module")
def prompt_wav(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("prompt") / "prompt.wav")
  t = np.arange(36_000) / 24_000
  sf.write(path, (0.3 * np.sin(2 * np.pi * (120 + 30 * np.sin(3 * t)) * t)).astype(np.float32),
           24_000)
  return path


def test_synthesis_makes_codebook1_with_the_nar_on_the_pointers_timing(prompt_wav):
  """`synthesize` with the variant's decoding: the AR's frames are not what is decoded
  (the NAR makes codebook 1 on the pointer's timing, the same again with the same seed);
  continual mode is refused in one sentence."""
  from valle_jax.codec import get_codec  # pylint: disable=g-import-not-at-top
  cfg = tiny.get_config().model
  ar = aligned_models.PointerARModel(cfg, rngs=nnx.Rngs(0))
  nar = aligned_models.TimedNARModel(cfg, rngs=nnx.Rngs(1))
  codec = get_codec({"name": "encodec", "weights": "random"})
  decoded = []

  class Recorder:
    def __getattr__(self, name):
      return getattr(codec, name)

    def decode(self, codes):
      decoded.append(np.asarray(codes))
      return codec.decode(codes)

  decoding = aligned_sampling.AlignedDecoding(aligned_sampling.PointerController())
  request = synthesize.Request("Hello there.", prompt_wav, "A quiet tone.")
  options = sampling.SampleOptions(top_k=20, max_frames_per_phoneme=1.0)
  for _ in range(2):
    synthesize.synthesize(ar, nar, text.SymbolTable.default(), Recorder(), [request], options,
                          decoding=decoding)
  assert decoded[0].shape[1] == 8 and len(decoded[0]) > 2
  np.testing.assert_array_equal(decoded[0], decoded[1])
  with pytest.raises(UserError, match="--continual"):
    synthesize.synthesize(ar, nar, text.SymbolTable.default(), codec,
                          [synthesize.Request("Hello there.", prompt_wav)], options,
                          continual=True, decoding=decoding)


# ------------------------------------------------------------------ a run of the variant


def test_alignments_are_mapped_not_read(tmp_path):
  """A split's alignments are memory-mapped from alignments.npz (equal to np.load's
  arrays), pickle to a worker process as where they are mapped from, and a compressed
  file still reads."""
  rng = np.random.default_rng(0)
  lens = rng.integers(1, 50, size=300)
  arrays = {"train/frames": rng.integers(0, 99, size=int(lens.sum()), dtype=np.int32),
            "train/offsets": np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)}
  path = str(tmp_path / aligned_data.ALIGNMENTS_FILE)
  np.savez(path, **arrays)
  dataset = types.SimpleNamespace(path=str(tmp_path), split=lambda split: range(300))
  alignments = aligned_data.load_alignments(dataset, "train")
  assert isinstance(alignments.frames, np.memmap) and isinstance(alignments.offsets, np.memmap)
  np.testing.assert_array_equal(alignments.frames, arrays["train/frames"])
  np.testing.assert_array_equal(alignments.offsets, arrays["train/offsets"])
  pickled = pickle.dumps(alignments)
  assert len(pickled) < 1000
  again = pickle.loads(pickled)
  assert isinstance(again.frames, np.memmap)
  for i in (0, 150, 299):
    np.testing.assert_array_equal(again[i], alignments[i])
  (tmp_path / "compressed").mkdir()
  np.savez_compressed(tmp_path / "compressed" / aligned_data.ALIGNMENTS_FILE, **arrays)
  compressed = aligned_data.load_alignments(
      types.SimpleNamespace(path=str(tmp_path / "compressed"), split=dataset.split), "train")
  assert not isinstance(compressed.frames, np.memmap)
  np.testing.assert_array_equal(compressed[299], alignments[299])
  with pytest.raises(UserError, match="no alignments of split 'test'"):
    aligned_data.load_alignments(dataset, "test")


def test_align_train_checkpoint_and_synthesize_through_the_recipe(tiny_dataset, tmp_path,
                                                                  prompt_wav):
  """`valle-jax align` on a real prepared dataset: one alignment per record, one phoneme
  index per frame, in range; a dataset without one gives an error that says what to run.
  Then the variant's config trains through VALL-E's `train` (its recipe: the pointer AR
  with its advance loss, the NAR on codebook 1 only), its checkpoint loads as the variant's
  models, and `load_models` + the recipe's decoding synthesise with them."""
  path = str(tmp_path / "dataset")
  shutil.copytree(tiny_dataset, path)
  with pytest.raises(UserError, match="valle-jax align"):
    aligned_data.load_alignments(data.open_dataset(path), "train")
  from valle_jax import cli  # pylint: disable=g-import-not-at-top
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["valle-jax", "align", f"--dataset={path}", "--iterations=2"])
  assert exit_info.value.code in (0, None)
  dataset = data.open_dataset(path)
  source = dataset.split("train")
  assert os.path.isfile(os.path.join(path, "alignments.npz"))
  alignments = aligned_data.load_alignments(dataset, "train")
  for i in range(len(source)):
    a, record = alignments[i], source[i]
    assert len(a) == len(record["codes"])
    assert a[0] == 0 and a[-1] == len(record["phonemes"]) - 1
    assert set(np.diff(a).tolist()) <= {0, 1}
  from valle_jax import train  # pylint: disable=g-import-not-at-top
  cfg = aligned_config.aligned(tiny.get_config())
  cfg.data.dataset, cfg.train.model = path, "both"
  cfg.data.frame_buckets, cfg.data.phoneme_buckets, cfg.data.max_tokens = (200,), (64,), 1600
  cfg.data.nar_stage_weights = (1, 0, 0, 0, 0, 0, 0, 0)   # codebook 1 only
  cfg.train.steps, cfg.train.log_every, cfg.checkpoint.every = 2, 1, 100
  cfg.pointer.max_dwell = 4.0
  run = str(tmp_path / "run")
  metrics = train.train(cfg, run)["metrics"]
  assert np.isfinite(metrics["nar/loss_codebook1"]) and np.isfinite(metrics["ar/advance_loss"])
  assert metrics["nar/tokens"] > 0 and "nar/loss_codebook2" not in metrics
  bundle, nar_bundle, symbols, codec = synthesize.load_models(run)
  assert nar_bundle is bundle
  nar = nar_bundle.nar
  assert bundle.recipe is aligned.RECIPE
  assert isinstance(bundle.ar, aligned_models.PointerARModel)
  assert isinstance(nar, aligned_models.TimedNARModel)
  decoding = bundle.recipe.decoding(bundle.config, bundle.codec_description)
  assert decoding.controller.max_dwell == 4.0
  # A NAR trained on "segment" prompts reads the text alone, on the pointer's timing
  # counted from the text's first phoneme.
  for nar_prompt in ("prefix", "segment"):
    (wav,) = synthesize.synthesize(bundle.ar, nar, symbols, codec,
                                   [synthesize.Request("Hello there.", prompt_wav, "A tone.")],
                                   sampling.SampleOptions(top_k=20, max_frames_per_phoneme=1.0),
                                   decoding=decoding, nar_prompt=nar_prompt)
    assert np.isfinite(wav).all()


def test_the_core_never_imports_a_variant_and_a_run_names_its_own():
  """Training, checkpoints, synthesis, evaluation and the demo load without importing
  valle_jax.variants; a run config naming an unloaded variant is one sentence."""
  code = ("import sys; import valle_jax.train, valle_jax.synthesize, valle_jax.checkpoint, "
          "valle_jax.evaluate_cli, valle_jax.demo, valle_jax.bench, valle_jax.recipe; "
          "print([m for m in sys.modules if m.startswith('valle_jax.variants')])")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert out.stdout.strip() == "[]", out.stdout
  assert recipe.of_config(tiny.get_config()) is recipe.VALLE
  assert recipe.of_config(aligned_config.get_config()) is aligned.RECIPE
  with pytest.raises(UserError, match="not loaded"):
    recipe.of_config(ml_collections.ConfigDict({"variant": "nonesuch"}))
