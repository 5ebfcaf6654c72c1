"""Input pipeline: buckets, token budget, determinism, resumable iterator, NAR prompts, the
index."""
import shutil
import time

from array_record.python import array_record_module
import ml_collections
import numpy as np
import pytest

from valle_jax import data, text
from valle_jax.errors import UserError


SYMBOLS = text.SymbolTable.default()


def _records(n=23, seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    frames = int(rng.integers(20, 280))
    out.append({"id": f"u{i}".encode(), "speaker": f"s{i % 3}".encode(),
                "phonemes": rng.integers(1, 50, int(rng.integers(5, 60))).astype(np.int32),
                "codes": rng.integers(0, 1024, (frames, 8)).astype(np.int16)})
  return out


def _cfg(**changes):
  c = ml_collections.ConfigDict({
      "frame_buckets": (100, 200, 300), "phoneme_buckets": (32, 64), "max_tokens": 800,
      "max_batch_size": 6, "prompt_seconds": 1.0, "nar_prompt": "prefix"})
  c.update(changes)
  return c


@pytest.fixture(scope="module")
def records():
  return _records()


@pytest.fixture(scope="module")
def lengths(records):
  return data.scan_lengths(records, progress=False)


def _utterances(plan, index):
  return plan.batch(index)[1][:, 1]


def test_plan_fills_batches_with_real_frames_up_to_the_budget(lengths):
  """Each batch holds bucket examples until the next would pass max_tokens real frames
  (or the bucket's example cap); rows it does not fill are padding, (-1, -1), at the end;
  one shape per bucket, a multiple of batch_multiple, at most max_batch_size."""
  plan = data.BatchPlan(lengths, _cfg(), seed=0, batch_multiple=2)
  not_full: dict[tuple[int, int], int] = {}
  real_frames = []
  for bucket, examples in plan.epoch(0):
    assert bucket.batch_size % 2 == 0 and examples.shape == (bucket.batch_size, 2)
    assert bucket.batch_size <= 6
    assert all(b.batch_size == bucket.batch_size for b, _ in plan.epoch(0)
               if b.frames == bucket.frames)                      # one shape per bucket
    members = examples[examples[:, 1] >= 0, 1]
    assert len(members) >= 1 and np.all(examples[len(members):] == -1)
    assert np.all(examples[:len(members), 0] == -1)              # no pairs by default
    frames = int(lengths.frames[members].sum())
    assert frames <= 800 or len(members) == 1
    real_frames.append(frames)
    key = (bucket.frames, bucket.phonemes)
    cap = plan.max_examples[[100, 200, 300].index(bucket.frames)]
    if frames + bucket.frames <= 800 and len(members) < cap:
      not_full[key] = not_full.get(key, 0) + 1       # room left: must be the bucket's last
    assert np.all(lengths.frames[members] <= bucket.frames)
    assert np.all(lengths.phonemes[members] <= bucket.phonemes)
    smaller = [f for f in (100, 200, 300) if f < bucket.frames]
    assert not smaller or np.all(lengths.frames[members] > max(smaller))
  assert all(n <= 1 for n in not_full.values()), not_full
  assert plan.dropped == 0 and not plan.cropped.any()
  assert plan.stats()["real_frames_per_batch"] == pytest.approx(np.mean(real_frames))
  # The budget counts real frames: examples of 201 frames in a 300-frame bucket go 3 to a
  # batch of 800 frames (603 real), where a padded-length budget took 800 // 300 = 2.
  short = data.Lengths(np.full(12, 201), np.full(12, 10), np.array(["a"] * 12))
  plan = data.BatchPlan(short, _cfg(frame_buckets=(300,)), seed=0)
  assert [int(np.sum(e[:, 1] >= 0)) for _, e in plan.epoch(0)] == [3] * 4


def test_every_example_each_epoch_deterministic(lengths):
  plan = data.BatchPlan(lengths, _cfg(), seed=3, batch_multiple=2)
  seen = np.concatenate([_utterances(plan, i) for i in range(plan.batches_per_epoch)])
  seen = seen[seen >= 0]
  assert sorted(seen.tolist()) == list(range(len(lengths.frames)))   # each exactly once
  again = data.BatchPlan(lengths, _cfg(), seed=3, batch_multiple=2)
  for i in range(2 * plan.batches_per_epoch):
    np.testing.assert_array_equal(plan.batch(i)[1], again.batch(i)[1])
  other_epoch = [_utterances(plan, plan.batches_per_epoch + i).tolist()
                 for i in range(plan.batches_per_epoch)]
  assert other_epoch != [_utterances(plan, i).tolist() for i in range(plan.batches_per_epoch)]


def test_crop_lengths():
  frames, phonemes = data.crop_lengths([80, 2000, 1000, 2000, 400, 100],
                                       [30, 300, 500, 3000, 1, 10 ** 6], 1500, 384)
  np.testing.assert_array_equal(frames, [80, 1500, 768, 256, 400, 0])     # 0: left out
  np.testing.assert_array_equal(phonemes, [30, 225, 384, 384, 1, 0])


def test_paper_config_takes_20_s_examples_and_crops_longer_ones():
  from configs import paper  # pylint: disable=g-import-not-at-top
  cfg = paper.get_config().data
  lengths = data.Lengths(np.array([1500, 1875, 1500]), np.array([250, 310, 600]),
                         np.array(["a", "a", "b"]))            # 20 s, 25 s, 20 s of 600
  plan = data.BatchPlan(lengths, cfg, seed=0, batch_multiple=16)
  np.testing.assert_array_equal(plan.cropped, [False, True, True])
  np.testing.assert_array_equal(plan.frames, [1500, 1500, 960])   # 384 phonemes' worth
  np.testing.assert_array_equal(plan.phonemes, [250, 248, 384])
  assert cfg.nar_prompt == "segment"


def test_too_long_examples_are_cropped_to_a_random_window_and_reported(records, lengths):
  """Examples longer than the largest frame bucket are trained on a random window of it
  (another each epoch), with their phonemes at the same relative position, and counted
  with their share of the audio; one no window fits is left out and counted."""
  cfg = _cfg(frame_buckets=(100,))
  plan = data.BatchPlan(lengths, cfg, seed=0)
  long = lengths.frames > 100
  share = lengths.frames[long].sum() / lengths.frames.sum()
  assert np.array_equal(plan.cropped, long) and plan.dropped == 0
  assert f"{long.sum()} examples ({share:.1%} of the audio) cropped" in plan.describe()
  stats = plan.stats()
  assert stats["cropped_examples"] == long.sum()
  assert stats["cropped_audio_share"] == pytest.approx(share)
  loader = data.BatchLoader(records, plan, cfg, kind="ar", num_codebooks=8, frame_rate=75.0)
  windows: dict[int, set[int]] = {}
  for index in range(plan.batch_offset(3)):
    batch = loader(index)["ar"]
    for row, member in enumerate(_utterances(plan, index)):
      if member < 0 or not long[member]:
        continue
      codes, phonemes = records[member]["codes"][:, 0], records[member]["phonemes"]
      window = batch["codes"][row, :batch["code_lens"][row], 0]
      assert len(window) == 100
      (start,) = [s for s in range(len(codes) - 99) if np.array_equal(codes[s:s + 100], window)]
      count = batch["phoneme_lens"][row]
      assert count == round(100 * len(phonemes) / len(codes))
      first = min(round(start * len(phonemes) / len(codes)), len(phonemes) - count)
      np.testing.assert_array_equal(batch["phonemes"][row, :count],
                                    phonemes[first:first + count])
      assert batch["ends_utterance"][row] == (start + 100 == len(codes))
      windows.setdefault(int(member), set()).add(start)
  assert set(windows) == set(np.flatnonzero(long).tolist())
  ends = {bool(loader(i)["ar"]["ends_utterance"][row]) for i in range(plan.batch_offset(3))
          for row, member in enumerate(_utterances(plan, i)) if member >= 0 and not long[member]}
  assert ends == {True}                                       # uncropped: their own end
  assert sum(len(w) > 1 for w in windows.values()) > len(windows) // 2   # new windows
  kept_out = data.BatchPlan(lengths, cfg, seed=0, crop_long=False)   # for alignments
  assert kept_out.dropped == long.sum() and not kept_out.cropped.any()
  assert f"{long.sum()} ({share:.1%} of the audio) left out" in kept_out.describe()
  unfit = data.Lengths(np.array([100, 50]), np.array([10 ** 6, 20]), np.array(["a", "a"]))
  plan = data.BatchPlan(unfit, cfg, seed=0)
  assert plan.dropped == 1 and "1 (66.7% of the audio) left out" in plan.describe()
  with pytest.raises(UserError, match="no example fits"):
    data.BatchPlan(data.Lengths(unfit.frames[:1], unfit.phonemes[:1], unfit.speakers[:1]),
                   cfg, seed=0)


def test_loader_pads_and_masks(records, lengths):
  plan = data.BatchPlan(lengths, _cfg(), seed=0)
  loader = data.BatchLoader(records, plan, _cfg(), kind="both", num_codebooks=8,
                            frame_rate=75.0)
  padding_rows = 0
  for index in range(plan.batches_per_epoch):
    batch = loader(index)
    bucket, examples = plan.batch(index)
    ar, nar = batch["ar"], batch["nar"]
    assert ar["codes"].shape == (bucket.batch_size, bucket.frames, 1)
    assert ar["phonemes"].shape == (bucket.batch_size, bucket.phonemes)
    np.testing.assert_array_equal(batch["index"], examples[:, 1])
    for row, index in enumerate(examples[:, 1]):
      if index < 0:   # padding: nothing in it, so nothing scored (models/losses.py)
        padding_rows += 1
        for lens in (ar["code_lens"], ar["phoneme_lens"], nar["code_lens"],
                     nar["prompt_lens"], nar["phoneme_lens"]):
          assert lens[row] == 0
        assert not ar["codes"][row].any() and not nar["prompt_codes"][row].any()
        continue
      rec = records[index]
      n = len(rec["codes"])
      assert ar["code_lens"][row] == n
      np.testing.assert_array_equal(ar["codes"][row, :n, 0], rec["codes"][:, 0])
      assert not ar["codes"][row, n:].any()
      # NAR: a prefix of at most min(prompt, half) is the prompt; the rest is the target.
      p = nar["prompt_lens"][row]
      assert 1 <= p <= max(1, min(75, n // 2))
      np.testing.assert_array_equal(nar["prompt_codes"][row, :p], rec["codes"][:p])
      np.testing.assert_array_equal(nar["codes"][row, :n - p], rec["codes"][p:])
      assert nar["code_lens"][row] == n - p
    assert nar["prompt_codes"].shape[1] == 75
    assert np.all((nar["stage"] >= 1) & (nar["stage"] < 8))
  assert padding_rows > 0


def test_prompt_from_other_utterance_of_same_speaker(records, lengths):
  cfg = _cfg(nar_prompt="other_utterance")
  plan = data.BatchPlan(lengths, cfg, seed=0)
  loader = data.BatchLoader(records, plan, cfg, kind="nar", num_codebooks=8, frame_rate=75.0)
  batch = loader(1)["nar"]
  for row, index in enumerate(_utterances(plan, 1)):
    if index < 0:
      continue
    assert batch["code_lens"][row] == len(records[index]["codes"])   # whole utterance
    prompt = batch["prompt_codes"][row, :batch["prompt_lens"][row]]
    # The prompt is a crop of another utterance by the same speaker.
    same_speaker = [j for j, r in enumerate(records)
                    if r["speaker"] == records[index]["speaker"] and j != index]
    assert any(_contains(records[j]["codes"], prompt) for j in same_speaker)


def test_segment_prompt_is_a_window_of_the_whole_target_not_scored_there(records, lengths):
  """nar_prompt = "segment" (the paper): the prompt is a random window of the utterance
  (prompt_seconds, at most a quarter), the target the whole utterance, and the loss skips
  the target frames under the window."""
  cfg = _cfg(nar_prompt="segment")
  plan = data.BatchPlan(lengths, cfg, seed=0)
  loader = data.BatchLoader(records, plan, cfg, kind="nar", num_codebooks=8, frame_rate=75.0)
  starts = []
  for index in range(plan.batches_per_epoch):
    batch = loader(index)["nar"]
    for row, member in enumerate(_utterances(plan, index)):
      if member < 0:
        continue
      codes = records[member]["codes"]
      n, p = len(codes), batch["prompt_lens"][row]
      assert batch["code_lens"][row] == n
      np.testing.assert_array_equal(batch["codes"][row, :n], codes)
      assert p == max(1, min(75, n // 4))
      prompt = batch["prompt_codes"][row, :p]
      (start,) = [s for s in range(n - p + 1) if np.array_equal(codes[s:s + p], prompt)][:1]
      expected = np.ones(batch["loss_mask"].shape[1], np.float32)
      expected[start:start + p] = 0.0
      np.testing.assert_array_equal(batch["loss_mask"][row], expected)
      starts.append(start / max(1, n - p))
  assert 0.2 < np.mean(starts) < 0.8 and np.std(starts) > 0.15     # anywhere, not a prefix
  with pytest.raises(UserError, match="nar_prompt"):
    data.BatchLoader(records, plan, _cfg(nar_prompt="suffix"), kind="nar", num_codebooks=8,
                     frame_rate=75.0)


def _contains(codes, crop):
  return any(np.array_equal(codes[s:s + len(crop)], crop)
             for s in range(len(codes) - len(crop) + 1))


def test_processes_get_disjoint_rows(records, lengths):
  plan = data.BatchPlan(lengths, _cfg(), seed=0, batch_multiple=2)
  parts = [data.BatchLoader(records, plan, _cfg(), kind="ar", num_codebooks=8, frame_rate=75.0,
                            process_index=p, process_count=2)(4)["index"] for p in range(2)]
  np.testing.assert_array_equal(np.concatenate(parts), _utterances(plan, 4))


def test_iterator_state_resumes_exactly(records, lengths):
  plan = data.BatchPlan(lengths, _cfg(), seed=0)
  loader = data.BatchLoader(records, plan, _cfg(), kind="nar", num_codebooks=8, frame_rate=75.0)
  it = data.batch_iterator(loader, 12)
  for _ in range(5):
    next(it)
  state = it.get_state()
  rest = [next(it) for _ in range(4)]
  resumed = data.batch_iterator(loader, 12)
  resumed.set_state(state)
  for expected in rest:
    got = next(resumed)
    np.testing.assert_array_equal(got["index"], expected["index"])
    for key in expected["nar"]:
      np.testing.assert_array_equal(got["nar"][key], expected["nar"][key])


def test_real_dataset_reads_back(tiny_dataset):
  dataset = data.open_dataset(tiny_dataset)
  source = dataset.split("train")
  assert len(source) == 8
  assert dataset.codec_description["num_codebooks"] == 8
  lengths = data.scan_lengths(source, progress=False)
  assert set(lengths.speakers.tolist()) == {"spk0", "spk1"}
  with pytest.raises(UserError, match="no split 'dev'"):
    dataset.split("dev")
  with pytest.raises(UserError, match="not a prepared dataset"):
    data.open_dataset(str(tiny_dataset) + "/nope")


def _without_index(tiny_dataset, tmp_path) -> str:
  """A copy of the dataset as a valle-jax before indexes prepared it (no index files)."""
  copy = str(tmp_path / "dataset")
  shutil.copytree(tiny_dataset, copy, ignore=shutil.ignore_patterns("index-*"))
  return copy


def test_index_written_by_prepare_matches_the_records(tiny_dataset):
  source = data.open_dataset(tiny_dataset).split("train")
  from_index = data.read_index(source)
  frames, phonemes, speakers = zip(*[(len(r["codes"]), len(r["phonemes"]),
                                      r["speaker"].decode()) for r in source])
  np.testing.assert_array_equal(from_index.frames, frames)
  np.testing.assert_array_equal(from_index.phonemes, phonemes)
  np.testing.assert_array_equal(from_index.speakers, speakers)
  with np.load(data.index_path(tiny_dataset, "train")) as index:
    for shard, offset, frame_count in zip(index["shard"], index["offset"], index["frames"]):
      reader = array_record_module.ArrayRecordReader(
          str(source.dataset_info.splits["train"].filepaths[shard]))
      record = source.dataset_info.features.deserialize_example_np(reader.read([offset])[0])
      reader.close()
      assert len(record["codes"]) == frame_count      # (shard, offset) locates the record


def test_batches_from_the_index_are_the_scans(tiny_dataset, tmp_path, capsys):
  """A dataset prepared before indexes still trains (its records scanned, with a line
  saying how to write the index), on the batches the index gives, each process its rows;
  `valle-jax index` writes the same index `prepare` does."""
  from valle_jax import cli  # pylint: disable=g-import-not-at-top
  old = _without_index(tiny_dataset, tmp_path)
  scanned = data.scan_lengths(data.open_dataset(old).split("train"), progress=True)
  assert "valle-jax index " in capsys.readouterr().out
  dataset = data.open_dataset(tiny_dataset)
  source = dataset.split("train")
  cfg = _cfg(frame_buckets=(100, 200, 400), phoneme_buckets=(32, 64), max_tokens=400,
             same_speaker_pairs=0.5, nar_prompt="other_utterance")
  plans = [data.BatchPlan(lengths, cfg, seed=0, batch_multiple=2)
           for lengths in (data.scan_lengths(source, progress=False), scanned)]
  symbols = text.SymbolTable.load(dataset.symbols_path)
  loaders = [[data.BatchLoader(source, plan, cfg, kind="both", num_codebooks=8,
                               frame_rate=75.0, symbols=symbols, process_index=p,
                               process_count=2) for p in range(2)] for plan in plans]
  assert plans[0].batches_per_epoch == plans[1].batches_per_epoch
  for i in range(2 * plans[0].batches_per_epoch):
    for from_index, from_scan in zip(*loaders):
      np.testing.assert_equal(from_index(i), from_scan(i))
    np.testing.assert_array_equal(np.concatenate([p(i)["index"] for p in loaders[0]]),
                                  _utterances(plans[0], i))
  with pytest.raises(SystemExit) as done:
    cli.main(["valle-jax", "index", old])
  assert not done.value.code
  with np.load(data.index_path(old, "train")) as written, \
      np.load(data.index_path(tiny_dataset, "train")) as by_prepare:
    assert written.files == by_prepare.files
    for key in written.files:
      np.testing.assert_array_equal(written[key], by_prepare[key])


def test_damaged_index_is_a_user_error(tiny_dataset, tmp_path):
  copy = _without_index(tiny_dataset, tmp_path)
  path = data.index_path(copy, "train")
  with np.load(data.index_path(tiny_dataset, "train")) as z:
    index = dict(z)
  source = data.open_dataset(copy).split("train")
  path.write_bytes(data.index_path(tiny_dataset, "train").read_bytes()[:200])
  with pytest.raises(UserError, match="cannot be read.*valle-jax index"):
    data.scan_lengths(source)
  data.write_index(path, {k: v for k, v in index.items() if k != "speaker"})
  with pytest.raises(UserError, match="has no speaker"):
    data.scan_lengths(source)
  data.write_index(path, {k: v[:-1] if v.ndim else v for k, v in index.items()})
  with pytest.raises(UserError, match="lists 7 records, the split's shards hold 8"):
    data.scan_lengths(source)
  data.write_index(path, {**index, "speaker": index["speaker"] + 5})
  with pytest.raises(UserError, match="speakers it does not list"):
    data.scan_lengths(source)
  assert sorted(p.name for p in path.parent.iterdir() if "index" in p.name) == [path.name]


def test_length_cache_survives_concurrent_writers(records, lengths, tmp_path):
  # Every process of a multi-process run scans and writes the same cache file at once.
  import concurrent.futures
  cache = str(tmp_path / "lengths-train.npz")
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    results = list(pool.map(lambda _: data.scan_lengths(records, cache, progress=False),
                            range(32)))
  for got in results + [data.scan_lengths(records, cache, progress=False)]:
    np.testing.assert_array_equal(got.frames, lengths.frames)
    np.testing.assert_array_equal(got.speakers, lengths.speakers)
  assert [p.name for p in tmp_path.iterdir()] == ["lengths-train.npz"]


def _pairs_cfg(p=1.0, **changes):
  return _cfg(**{"frame_buckets": (100, 200, 300, 600), "phoneme_buckets": (32, 64, 128),
                 "same_speaker_pairs": p, **changes})


def test_same_speaker_pairs_change_each_epoch_and_cover_every_utterance(records, lengths):
  plan = data.BatchPlan(lengths, _pairs_cfg(), seed=0, batch_multiple=2)
  partners = [plan.partners(e) for e in range(3)]
  for partner in partners:
    assert np.all(partner >= 0)                         # p = 1 and every pair fits
    assert np.all(partner != np.arange(len(partner)))
    assert np.all(lengths.speakers[partner] == lengths.speakers)
  assert not np.array_equal(partners[0], partners[1])   # new partners each epoch
  start = 0
  for epoch in range(3):
    end = plan.batch_offset(epoch + 1)
    assert end - start == len(plan.epoch(epoch))
    seen = np.concatenate([plan.batch(i)[1] for i in range(start, end)])
    seen = seen[seen[:, 1] >= 0]
    assert sorted(seen[:, 1].tolist()) == list(range(len(lengths.frames)))
    np.testing.assert_array_equal(seen[:, 0], partners[epoch][seen[:, 1]])
    for bucket, examples in plan.epoch(epoch):        # a pair is bucketed by its own length
      examples = examples[examples[:, 1] >= 0]
      both = lengths.frames[examples[:, 0]] + lengths.frames[examples[:, 1]]
      assert np.all(both <= bucket.frames)
    start = end
  again = data.BatchPlan(lengths, _pairs_cfg(), seed=0, batch_multiple=2)
  for i in reversed(range(start)):                      # random access, any order
    np.testing.assert_array_equal(again.batch(i)[1], plan.batch(i)[1])
  # The loader puts the partner first, for the AR and the NAR: codes concatenated, phonemes
  # joined as zero-shot synthesis joins a prompt's transcript and the text.
  loader = data.BatchLoader(records, plan, _pairs_cfg(), kind="both", num_codebooks=8,
                            frame_rate=75.0, symbols=SYMBOLS)
  batch = loader(start - 1)
  for row, (partner, index) in enumerate(plan.batch(start - 1)[1]):
    if index < 0:
      continue
    codes = np.concatenate([records[partner]["codes"], records[index]["codes"]])
    phonemes, _ = text.join_prompt_and_text(records[partner]["phonemes"],
                                            records[index]["phonemes"], SYMBOLS)
    n = len(codes)
    assert batch["ar"]["code_lens"][row] == n and batch["index"][row] == index
    np.testing.assert_array_equal(batch["ar"]["codes"][row, :n, 0], codes[:, 0])
    np.testing.assert_array_equal(batch["ar"]["phonemes"][row, :len(phonemes)], phonemes)
    p = batch["nar"]["prompt_lens"][row]
    np.testing.assert_array_equal(batch["nar"]["prompt_codes"][row, :p], codes[:p])
    np.testing.assert_array_equal(batch["nar"]["codes"][row, :n - p], codes[p:])


def test_pairs_that_do_not_fit_stay_single_and_probability_is_honoured(lengths):
  cfg = _pairs_cfg(0.5, frame_buckets=(100, 200, 300))
  plan = data.BatchPlan(lengths, cfg, seed=1)
  paired = np.concatenate([plan.partners(e) for e in range(40)]).reshape(40, -1)
  both = lengths.frames[paired] + lengths.frames[None, :]
  assert np.all(both[paired >= 0] <= 300)
  fits_with_someone = [any(lengths.frames[j] + lengths.frames[i] <= 300
                           for j in range(len(lengths.frames))
                           if j != i and lengths.speakers[j] == lengths.speakers[i])
                       for i in range(len(lengths.frames))]
  assert np.all(paired[:, ~np.asarray(fits_with_someone)] == -1)
  # Examples whose every same-speaker partner fits are paired about half the time.
  always_fits = [i for i in range(len(lengths.frames))
                 if all(lengths.frames[j] + lengths.frames[i] <= 300
                        for j in range(len(lengths.frames)) if lengths.speakers[j] == lengths.speakers[i])]
  assert always_fits
  rate = np.mean(paired[:, always_fits] >= 0)
  assert 0.4 < rate < 0.6, rate
  with pytest.raises(UserError, match="same_speaker_pairs"):
    data.BatchPlan(lengths, _pairs_cfg(1.5), seed=0)


def test_pairs_resume_exactly_across_epochs(records, lengths):
  plan = data.BatchPlan(lengths, _pairs_cfg(), seed=0)
  loader = data.BatchLoader(records, plan, _pairs_cfg(), kind="ar", num_codebooks=8,
                            frame_rate=75.0, symbols=SYMBOLS)
  total = plan.batch_offset(2) + 2                      # into the third epoch
  it = data.batch_iterator(loader, total)
  for _ in range(plan.batch_offset(1) - 1):
    next(it)
  state = it.get_state()
  rest = [next(it) for _ in range(total - plan.batch_offset(1) + 1)]
  resumed = data.batch_iterator(loader, total)
  resumed.set_state(state)
  for expected in rest:
    got = next(resumed)
    np.testing.assert_array_equal(got["ar"]["codes"], expected["ar"]["codes"])
  with pytest.raises(StopIteration):
    next(resumed)


def test_nar_stage_weights(records, lengths):
  cfg = _cfg(nar_stage_weights=(3, 1, 0, 0, 0, 0, 0))
  plan = data.BatchPlan(lengths, cfg, seed=0)
  loader = data.BatchLoader(records, plan, cfg, kind="nar", num_codebooks=8, frame_rate=75.0)
  stages = np.concatenate([loader(i)["nar"]["stage"] for i in range(3 * plan.batches_per_epoch)])
  assert set(stages.tolist()) == {1, 2}                 # codebooks 2 and 3 only (0-based 1, 2)
  assert 0.6 < np.mean(stages == 1) < 0.9
  for bad in [(1, 2), (0,) * 7, (1, -1, 1, 1, 1, 1, 1)]:
    with pytest.raises(UserError, match="nar_stage_weights"):
      data.BatchLoader(records, plan, _cfg(nar_stage_weights=bad), kind="nar",
                       num_codebooks=8, frame_rate=75.0)


def test_prefetcher_keeps_order_and_resumes_at_the_batches_taken(records, lengths):
  plan = data.BatchPlan(lengths, _cfg(), seed=0)
  loader = data.BatchLoader(records, plan, _cfg(), kind="ar", num_codebooks=8, frame_rate=75.0)
  expected = [b["index"] for b in data.batch_iterator(loader, 10)]
  with data.Prefetcher(data.batch_iterator(loader, 10), depth=3) as it:
    taken = [next(it)["index"] for _ in range(4)]
    while it._queue.qsize() < 3:   # it has read ahead, past what was taken
      time.sleep(0.01)
    state = it.get_state()
  resumed = data.Prefetcher(data.batch_iterator(loader, 10), depth=3)
  resumed.set_state(state)
  rest = [b["index"] for b in resumed]
  resumed.close()
  for got, want in zip(taken + rest, expected, strict=True):
    np.testing.assert_array_equal(got, want)


class _Counting:
  """A checkpointable iterator over 0, 1, ... that fails at `fail_at`."""

  def __init__(self, stop: int, fail_at: int = -1):
    self.i, self.stop, self.fail_at = 0, stop, fail_at

  def __next__(self):
    if self.i == self.fail_at:
      raise UserError(f"record {self.i} is damaged")
    if self.i == self.stop:
      raise StopIteration
    self.i += 1
    return self.i - 1

  def get_state(self):
    return {"i": self.i}

  def set_state(self, state):
    self.i = state["i"]


@pytest.mark.parametrize("depth", [0, 2])
def test_prefetcher_raises_the_producers_error_at_its_batch(depth):
  it = data.Prefetcher(_Counting(10, fail_at=3), transform=lambda x: x * 10, depth=depth)
  assert [next(it) for _ in range(3)] == [0, 10, 20]
  with pytest.raises(UserError, match="record 3 is damaged"):
    next(it)
  assert it.get_state() == {"i": 3}
  it.close()


def test_prefetcher_close_stops_a_blocked_producer():
  it = data.Prefetcher(_Counting(10 ** 9), depth=2)
  assert next(it) == 0
  it.close()                     # the producer waits on a full queue: close must end it
  assert not it._thread.is_alive()
  assert it.get_state() == {"i": 1}


def test_worker_processes_load_the_same_batches_and_resume_exactly(records, lengths):
  """data.workers: batches loaded in 2 Grain worker processes come in the order one
  process loads them, and a worker iterator's state resumes at the next batch."""
  plan = data.BatchPlan(lengths, _cfg(), seed=0)
  loader = data.BatchLoader(records, plan, _cfg(), kind="ar", num_codebooks=8, frame_rate=75.0)
  expected = [b["index"] for b in data.batch_iterator(loader, 9)]
  with data.Prefetcher(data.batch_iterator(loader, 9, workers=2)) as it:
    taken = [next(it)["index"] for _ in range(4)]
    state = it.get_state()
  with data.Prefetcher(data.batch_iterator(loader, 9, workers=2)) as resumed:
    resumed.set_state(state)
    rest = [b["index"] for b in resumed]
  for got, want in zip(taken + rest, expected, strict=True):
    np.testing.assert_array_equal(got, want)
