"""`valle-jax demo`: every stage's settings (`get_config()` the full demo, `get_config(quick=True)`
the CI-sized one). The driver is valle_jax/demo.py; docs/demo.md says what each stage does
and why each setting has its value.

VALL-E as in the paper, at toy size: the AR samples codebook 1, the NAR makes codebooks 2-8
in 7 stages, and all 8 are decoded. `--budget=MINUTES` scales the training steps linearly
(`budget_minutes` is the budget they are sized for). `valle-jax demo --variant=aligned` runs
the aligned variant's demo instead (valle_jax/variants/aligned/config.py).
"""
import ml_collections

from configs import tiny
from configs.base import base
from configs.corpus import synthetic


def _model(quick: bool) -> ml_collections.ConfigDict:
  """The training config (configs/base.py fields); `data.dataset` is set by the demo."""
  if quick:
    c = tiny.get_config()
    c.data.frame_buckets = (600,)   # one shape: one compilation
    c.data.phoneme_buckets = (128,)
    c.data.same_speaker_pairs = 0.5  # pairs that fit the one bucket
    c.train.steps = 30
    c.train.log_every = 5
    c.checkpoint.every = 15
  else:
    c = base()   # a toy AR + NAR, sized for a 2-core CPU (docs/demo.md)
    c.model.num_layers = 4
    c.model.num_heads = 4
    c.model.width = 192
    c.model.mlp_dim = 768
    c.model.dropout = 0.0
    c.optim.peak_lr = 2e-3
    c.optim.warmup_steps = 100
    c.data.same_speaker_pairs = 1.0  # every example a pair: as long as prompt + text
    c.data.frame_buckets = (300, 450, 600, 750, 900, 1200)
    c.data.phoneme_buckets = (128, 192, 256)
    c.data.max_tokens = 2400
    c.data.max_batch_size = 16
    c.train.steps = 1100
    c.train.log_every = 25
    c.checkpoint.every = 100
  c.train.model = "both"
  # One evaluation, at the end of training, on the held-out voices (losses, ar/text_gain).
  c.data.eval_split = "test"
  c.train.eval_every = c.train.get_ref("steps")
  c.train.eval_batches = 8
  c.checkpoint.keep = 2
  return c


def get_config(quick: bool = False) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.quick = quick
  c.seed = 0
  c.budget_minutes = 80.0          # the wall time train.train.steps is sized for (whole demo)

  # Stage 1: the built-in synthetic corpus (configs/corpus/synthetic.py) with held-out voices.
  c.corpus = synthetic.get_config()
  if quick:
    # Enough training audio for the offline codec (>= 110 s).
    c.corpus.voices = ["espeak-ng:en-us", "flite:kal", "flite:slt", "flite:rms", "flite:awb"]
    c.corpus.heldout_voices = ["flite:rms", "flite:awb"]
    c.corpus.num_utterances = 40
    c.corpus.num_heldout_utterances = 4
    c.corpus.min_words = 8
    c.corpus.max_words = 14
  # The test_seen split: training voices say the test sentences (seen voices, new text), 2 per
  # training voice, so each has a prompt from another of its utterances.
  training_voices = len(c.corpus.voices) - len(c.corpus.heldout_voices)
  c.corpus.num_seen_voice_utterances = 2 * training_voices

  # Stage 2: the offline codec (valle_jax/codec/offline.py FitConfig), training split only.
  c.codec = ml_collections.ConfigDict()
  c.codec.iters = 3 if quick else 10
  c.codec.max_frames = 200_000
  c.codec.content_first = True     # codebook 1: frames less their utterance's mean voice
  c.codec.voice_codebooks = 0     # no codebook coded once per utterance (the codec's option)

  # Stage 4: training (AR and NAR together, train.model = "both").
  c.train = _model(quick)

  # Stage 5: zero-shot synthesis for the held-out voices (the paper's protocol: the prompt is
  # another utterance of the same speaker, the one whose length is closest to 3 s, whole,
  # with its transcript).
  c.synthesis = ml_collections.ConfigDict()
  c.synthesis.prompt_seconds = 3.0
  # Per condition (unseen voices, seen voices); 0 = every utterance of its split.
  c.synthesis.max_utterances = 4 if quick else 0
  c.synthesis.batch_size = 1
  c.synthesis.codebooks = 0        # make and decode the codec's first K codebooks (0: all)
  c.synthesis.seed = 0
  c.synthesis.sample = ml_collections.ConfigDict()   # sampling.SampleOptions fields
  c.synthesis.sample.top_k = 50
  c.synthesis.sample.max_frames_per_phoneme = 4.0 if quick else 12.0
  c.synthesis.sample.max_frames = 150 if quick else 1500

  # Stage 6: evaluation (valle_jax/evaluate.py scorers).
  c.evaluate = ml_collections.ConfigDict()
  c.evaluate.asr = "pocketsphinx"
  c.evaluate.speaker = "resemblyzer"

  # Stage 7: report.html.
  c.report = ml_collections.ConfigDict()
  c.report.max_samples = 12        # utterances with players and spectrograms
  c.report.notes = ()              # more lines for the report (a variant's demo says what it is)
  return c
