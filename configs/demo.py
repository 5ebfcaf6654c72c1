"""`valle-jax demo`: every stage's settings (`get_config()` the full demo, `get_config(quick=True)`
the CI-sized one). See valle_jax/demo.py.

The full demo takes about 55 minutes on a 2-core CPU (53 measured, README "The demo"): the
built-in corpus (1000 training utterances of 16 voices, 60 held-out utterances of 3 unseen
voices), the offline codec fitted on the training split, and a small AR + NAR (4 layers,
width 192) trained together for `train.train.steps` steps. `--budget=MINUTES` scales the
training steps linearly (`budget_minutes` is the budget the steps were sized for).
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
    c.data.same_speaker_pairs = 0.5  # the pairs that fit the one bucket
    c.train.steps = 30
    c.train.log_every = 5
    c.checkpoint.every = 15
  else:
    # Sized by measurement on a 2-core CPU: a train step (<= 2400 frames, AR + NAR) took
    # 2.6 s in the demo (2.1 s in `bench train` at width 192, 2.8 s at 256), so training is
    # ~50 min with its compilations, the rest of the demo ~20 min. In so few steps a narrower
    # model with no dropout and a high learning rate learns faster than a wider one.
    c = base()
    c.model.num_layers = 4
    c.model.num_heads = 4
    c.model.width = 192
    c.model.mlp_dim = 768
    c.model.dropout = 0.0
    # The offline codec's centroids give the acoustic embeddings their geometry: NAR loss
    # 6.09 vs 6.18 at step 150 (AR 2.39 vs 2.41) in this demo.
    c.model.acoustic_embedding_init = "codec"
    c.optim.peak_lr = 2e-3
    c.optim.warmup_steps = 100
    # Every example is another utterance of its speaker followed by itself: trained on the
    # single utterances (4.4 s median) the AR stopped zero-shot speech where they stop,
    # 2.2 s into 4.6 s targets (prompt 2.9 s + 2.2 s = a training utterance); trained on
    # pairs it speaks 4.8 s (data.py; README "The demo").
    c.data.same_speaker_pairs = 1.0
    c.data.frame_buckets = (300, 450, 600, 750, 900, 1200)
    c.data.phoneme_buckets = (128, 192, 256)
    # Codebooks 2-4 carry most of what the NAR adds (offline codec WER with 1 / 2 / 4 / 8
    # codebooks: 0.93 / 0.83 / 0.64 / 0.58), so they are drawn more often. With the voice
    # codebook (below), codebook 2 is the voice, one code per utterance, which synthesis
    # copies from the prompt (sampling.decode_nar), so the NAR never learns it (weight 0):
    # trained at weight 2, its guess never named the prompt's code for a held-out voice
    # (0 of 15), only training voices'. The frames' detail starts at codebook 3, but in this
    # budget the NAR stays at chance on it for held-out voices (6.9-7.0 nats, 2026-12-02),
    # and synthesis decodes codebooks 1-2 only (synthesis.codebooks). So the NAR spends
    # every step on codebook 1 (model.nar_codebook1, below). In the full demo (2026-12-02)
    # it then carried 173 words of 836 instead of 160 on the same timing, though its
    # held-out loss was no lower (4.62 vs 4.55 nats; training split 2.51 vs 2.65).
    c.data.nar_stage_weights = (1, 0, 0, 0, 0, 0, 0, 0)
    c.data.max_tokens = 2400
    c.data.max_batch_size = 16
    c.train.steps = 1100
    c.train.log_every = 25
    c.checkpoint.every = 100
  c.train.model = "both"
  # The AR's phoneme pointer (configs/base.py; beyond the paper). Without it the demo's AR
  # never learnt to read the text in its budget: ar/text_gain <= 0.001 nats per token on
  # the held-out voices, in every variant measured (README "The demo"). With it, in the full
  # demo (2026-11-25): 0.238, and WER 0.982 (1.179 without).
  c.model.ar_phoneme_pointer = True
  # The NAR also learns codebook 1 and makes it for every frame at once, on the timing the
  # AR's pointer takes (configs/base.py). The AR's own drawn frames lost the words: on 30
  # held-out utterances, with the same AR timing, PocketSphinx heard 68 of 419 words
  # instead of 15 (README "The demo").
  c.model.nar_codebook1 = True
  # One evaluation, at the end of training, on pairs of the held-out voices: the losses and
  # `ar/text_gain`, what the AR gains from reading the text (README "The demo").
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
    # The offline codec needs >= 110 s of training audio: ~40 sentences of 8+ words.
    c.corpus.voices = ["espeak-ng:en-us", "flite:kal", "flite:slt", "flite:rms", "flite:awb"]
    c.corpus.heldout_voices = ["flite:rms", "flite:awb"]
    c.corpus.num_utterances = 40
    c.corpus.num_heldout_utterances = 4
    c.corpus.min_words = 8
    c.corpus.max_words = 14

  # Stage 2: the offline codec (valle_jax/codec/offline.py FitConfig), training split only.
  c.codec = ml_collections.ConfigDict()
  c.codec.iters = 3 if quick else 10
  c.codec.max_frames = 200_000
  # Features.content_first (codebook 1 codes frames less their utterance's mean voice).
  # The true codebook 1 + the trained NAR reach WER 0.79 with it (off: 0.95). Without the
  # phoneme pointer it did not help (the AR did not read the text either way); with it,
  # 300 AR-only steps gave WER 1.015 / SIM 0.532 to the prompt vs 0.497 to other voices on
  # 20 held-out utterances (off: 1.019 / 0.481 vs 0.467). But codebook 1 then carries no
  # voice, and the full demo's NAR did not learn codebooks 3-8: SIM 0.537 to the prompt and
  # to the other voices (README "The demo"). Hence Features.voice_codebooks: codebook 2 codes
  # that utterance mean, one code per utterance, which synthesis copies from the prompt
  # (the voice is the prompt's); codebooks 3-8 code what is left of each frame.
  c.codec.content_first = True
  c.codec.voice_codebooks = 1

  # Stage 4: training (AR and NAR together, train.model = "both").
  c.train = _model(quick)

  # Stage 5: zero-shot synthesis for the held-out voices (the paper's protocol: the prompt is
  # another utterance of the same speaker, the one whose length is closest to 3 s, whole,
  # with its transcript).
  c.synthesis = ml_collections.ConfigDict()
  c.synthesis.prompt_seconds = 3.0
  c.synthesis.max_utterances = 0   # 0 = every held-out utterance
  c.synthesis.batch_size = 1
  # Codebook 1 and the copied voice code only: the NAR's codebooks 3-8 are at chance on
  # held-out voices (eval loss 6.85 nats, top-10 4%), and decoding them cost similarity and
  # intelligibility (README "The demo").
  c.synthesis.codebooks = 2        # make and decode the codec's first K codebooks (0: all)
  c.synthesis.seed = 0
  c.synthesis.sample = ml_collections.ConfigDict()   # sampling.SampleOptions fields
  c.synthesis.sample.top_k = 50
  c.synthesis.sample.max_frames_per_phoneme = 4.0 if quick else 12.0
  c.synthesis.sample.max_frames = 150 if quick else 1500
  # The phoneme pointer moves on after 8 x the prompt's frames per phoneme, and on the last
  # phoneme the utterance ends: without it 2 of the 60 outputs never chose EOS there and ran
  # to the 20 s limit (87 inserted words of the 836). At 4 x it also cut words short
  # (outputs of 3.8 s for 4.7 s targets, 37 words heard instead of 43).
  c.synthesis.sample.max_dwell = 8.0
  # The pointer moves on at the median phoneme length its move-on probabilities give, not by
  # a draw per frame (sampling.SampleOptions.pointer_advance). Full demo (2026-12-02, these
  # models): drawn, outputs 5.1 s for 4.6 s targets (with the previous NAR: 118 of 836 words
  # heard, WER 0.974); at the mean 5.4 s (173 heard, 158 inserted, WER 0.982); at the median
  # 4.3 s, the closest to the targets (153 heard, 90 inserted, WER 0.925).
  c.synthesis.sample.pointer_advance = "median"

  # Stage 6: evaluation (valle_jax/evaluate.py scorers).
  c.evaluate = ml_collections.ConfigDict()
  c.evaluate.asr = "pocketsphinx"
  c.evaluate.speaker = "resemblyzer"

  # Stage 7: report.html.
  c.report = ml_collections.ConfigDict()
  c.report.max_samples = 12        # utterances with players and spectrograms
  return c
