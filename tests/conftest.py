"""Test setup: 8 simulated CPU devices (set before JAX starts) and a compilation cache."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (must follow the environment set-up above)

jax.config.update("jax_num_cpu_devices", 8)
# A persistent cache makes re-runs of the suite compile almost nothing.
jax.config.update("jax_compilation_cache_dir",
                  os.environ.get("VALLE_JAX_TEST_CACHE",
                                 os.path.join(os.path.dirname(__file__), "..", ".jax_cache")))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

try:  # EnCodec's and resemblyzer's LSTMs on short clips: one torch thread is 7-18x faster
  import torch  # noqa: E402  # than two fighting JAX for 2 cores (measured here)
  torch.set_num_threads(1)
except ImportError:
  pass

TINY_TEXTS = ("the cat sat on the mat", "a quick brown fox jumps", "hello there my friend",
              "seven green apples fell down", "we walk to the river today",
              "light rain in the morning", "birds sing in the old tree", "time to go home now")


def write_tone_corpus(root: str, texts=TINY_TEXTS, sample_rate: int = 24_000) -> str:
  """A folder corpus of gliding tones (two 'speakers', 1-2.4 s) with real transcripts."""
  import soundfile as sf  # pylint: disable=g-import-not-at-top
  for i, text in enumerate(texts):
    speaker_dir = os.path.join(root, f"spk{i % 2}")
    os.makedirs(speaker_dir, exist_ok=True)
    t = np.arange(int(sample_rate * (1.0 + 0.2 * i))) / sample_rate
    f0 = 110 + 50 * (i % 2) + 25 * np.sin(2 * np.pi * (0.5 + 0.3 * i) * t)
    wav = 0.3 * np.sin(2 * np.pi * np.cumsum(f0) / sample_rate) * (0.6 + 0.4 * np.sin(6 * t))
    sf.write(os.path.join(speaker_dir, f"utt{i}.wav"), wav.astype(np.float32), sample_rate)
    with open(os.path.join(speaker_dir, f"utt{i}.txt"), "w", encoding="utf-8") as f:
      f.write(text)
  return root


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> str:
  """A real dataset written by data prep (folder corpus, random-init EnCodec): its path."""
  from configs.data import folder  # pylint: disable=g-import-not-at-top
  from data_prep import pipeline  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("tiny_dataset")
  cfg = folder.get_config()
  cfg.source = write_tone_corpus(str(root / "corpus"))
  cfg.output = str(root / "prepared")
  cfg.codec.weights = "random"
  return pipeline.prepare(cfg)["dataset"]


@pytest.fixture(scope="session")
def trained_run(tiny_dataset, tmp_path_factory) -> str:
  """A real training run (tiny AR + NAR, 40 steps on `tiny_dataset`, 8 devices, evaluated
  every 20 steps): its workdir, with metrics.jsonl and a final checkpoint."""
  from configs import tiny  # pylint: disable=g-import-not-at-top
  from valle_jax import train  # pylint: disable=g-import-not-at-top
  cfg = tiny.get_config()
  cfg.data.dataset = tiny_dataset
  cfg.train.model = "both"
  cfg.data.frame_buckets, cfg.data.phoneme_buckets = (200,), (64,)
  cfg.data.max_tokens = 1600
  cfg.train.steps, cfg.train.log_every, cfg.checkpoint.every = 40, 5, 100
  cfg.data.eval_split, cfg.train.eval_every, cfg.train.eval_batches = "train", 20, 1
  workdir = str(tmp_path_factory.mktemp("trained_run"))
  train.train(cfg, workdir)
  return workdir
