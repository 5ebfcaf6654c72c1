"""Input pipeline: buckets, token budget, determinism, resumable iterator, NAR prompts."""
import ml_collections
import numpy as np
import pytest

from valle_jax import data
from valle_jax.errors import UserError


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
      "max_batch_size": 6, "prompt_seconds": 1.0, "prompt_from_other_utterance": False})
  c.update(changes)
  return c


@pytest.fixture(scope="module")
def records():
  return _records()


@pytest.fixture(scope="module")
def lengths(records):
  return data.scan_lengths(records, progress=False)


def test_plan_buckets_and_token_budget(lengths):
  plan = data.BatchPlan(lengths, _cfg(), seed=0, batch_multiple=2)
  for bucket in plan.buckets:
    assert bucket.batch_size % 2 == 0
    assert bucket.batch_size <= 6 and (bucket.batch_size * bucket.frames <= 800
                                       or bucket.batch_size == 2)
    assert np.all(lengths.frames[bucket.members] <= bucket.frames)
    assert np.all(lengths.phonemes[bucket.members] <= bucket.phonemes)
  placed = np.concatenate([b.members for b in plan.buckets])
  assert len(placed) + plan.dropped == len(lengths.frames)
  assert plan.dropped == 0


def test_every_example_each_epoch_deterministic(lengths):
  plan = data.BatchPlan(lengths, _cfg(), seed=3, batch_multiple=2)
  seen = np.concatenate([plan.batch(i)[1] for i in range(plan.batches_per_epoch)])
  assert set(seen.tolist()) == set(range(len(lengths.frames)))   # none lost
  # Wrap-around fill repeats at most (batch size - 1) examples per bucket.
  assert len(seen) - len(set(seen.tolist())) < sum(b.batch_size for b in plan.buckets)
  again = data.BatchPlan(lengths, _cfg(), seed=3, batch_multiple=2)
  for i in range(2 * plan.batches_per_epoch):
    np.testing.assert_array_equal(plan.batch(i)[1], again.batch(i)[1])
  other_epoch = [plan.batch(plan.batches_per_epoch + i)[1].tolist()
                 for i in range(plan.batches_per_epoch)]
  assert other_epoch != [plan.batch(i)[1].tolist() for i in range(plan.batches_per_epoch)]


def test_too_long_examples_are_left_out_and_reported(lengths):
  plan = data.BatchPlan(lengths, _cfg(frame_buckets=(100,)), seed=0)
  assert plan.dropped == int(np.sum(lengths.frames > 100))
  assert "longer than the largest bucket" in plan.describe()
  with pytest.raises(UserError, match="no example fits"):
    data.BatchPlan(lengths, _cfg(frame_buckets=(5,)), seed=0)


def test_loader_pads_and_masks(records, lengths):
  plan = data.BatchPlan(lengths, _cfg(), seed=0)
  loader = data.BatchLoader(records, plan, _cfg(), kind="both", num_codebooks=8,
                            frame_rate=75.0)
  batch = loader(0)
  bucket, members = plan.batch(0)
  ar, nar = batch["ar"], batch["nar"]
  assert ar["codes"].shape == (bucket.batch_size, bucket.frames, 1)
  assert ar["phonemes"].shape == (bucket.batch_size, bucket.phonemes)
  for row, index in enumerate(members):
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


def test_prompt_from_other_utterance_of_same_speaker(records, lengths):
  cfg = _cfg(prompt_from_other_utterance=True)
  plan = data.BatchPlan(lengths, cfg, seed=0)
  loader = data.BatchLoader(records, plan, cfg, kind="nar", num_codebooks=8, frame_rate=75.0)
  batch = loader(1)["nar"]
  _, members = plan.batch(1)
  for row, index in enumerate(members):
    assert batch["code_lens"][row] == len(records[index]["codes"])   # whole utterance
    prompt = batch["prompt_codes"][row, :batch["prompt_lens"][row]]
    # The prompt is a crop of another utterance by the same speaker.
    same_speaker = [j for j, r in enumerate(records)
                    if r["speaker"] == records[index]["speaker"] and j != index]
    assert any(_contains(records[j]["codes"], prompt) for j in same_speaker)


def _contains(codes, crop):
  return any(np.array_equal(codes[s:s + len(crop)], crop)
             for s in range(len(codes) - len(crop) + 1))


def test_processes_get_disjoint_rows(records, lengths):
  plan = data.BatchPlan(lengths, _cfg(), seed=0, batch_multiple=2)
  parts = [data.BatchLoader(records, plan, _cfg(), kind="ar", num_codebooks=8, frame_rate=75.0,
                            process_index=p, process_count=2)(4)["index"] for p in range(2)]
  np.testing.assert_array_equal(np.concatenate(parts), plan.batch(4)[1])


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
