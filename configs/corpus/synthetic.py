"""The built-in synthetic corpus (`valle-jax make-corpus --config=configs/corpus/synthetic.py`).

`voices` were chosen from `candidate_voices` by measured distinctness (`--measure_voices`:
resemblyzer similarity of mean speaker embeddings); see docs/synthetic_corpus.md.
"""
import ml_collections

# Everything --measure_voices compares: espeak-ng accents x variants (x pitch), the flite
# voices and the festival voices of Debian main.
CANDIDATE_VOICES = (
    "espeak-ng:en-us", "espeak-ng:en-gb", "espeak-ng:en-us+m1", "espeak-ng:en-us+m3",
    "espeak-ng:en-us+m6", "espeak-ng:en-us+f1", "espeak-ng:en-us+f3", "espeak-ng:en-us+f5",
    "espeak-ng:en-gb+f2", "espeak-ng:en-gb+f4", "espeak-ng:en-gb-scotland+m2",
    "espeak-ng:en-gb-x-rp+m7", "espeak-ng:en-029+m5", "espeak-ng:en-us-nyc+f2",
    "espeak-ng:en-us+klatt", "espeak-ng:en-us+klatt2", "espeak-ng:en-gb+klatt3",
    "espeak-ng:en-us+klatt4", "espeak-ng:en-us+Annie", "espeak-ng:en-us+Andy",
    "espeak-ng:en-us+Storm", "espeak-ng:en-us+grandma", "espeak-ng:en-gb+grandpa",
    "espeak-ng:en-us+Michael", "espeak-ng:en-us+Alicia", "espeak-ng:en-gb+croak",
    "espeak-ng:en-us+m2/pitch=15", "espeak-ng:en-us+f4/pitch=85",
    "flite:kal", "flite:kal16", "flite:awb", "flite:rms", "flite:slt",
    "festival:kal_diphone", "festival:ked_diphone", "festival:cmu_us_slt_arctic_hts",
)

# The greedy distinct set of CANDIDATE_VOICES at max_voice_similarity 0.85 (measured; the
# table is docs/voice_similarity.md). espeak-ng's en-gb ignores variants (en-gb+f2 is en-gb),
# and en-us m1/m3/m6, en-gb, en-029 and the klatt variants are within 0.9 of en-us.
VOICES = (
    "espeak-ng:en-us", "espeak-ng:en-us+f1", "espeak-ng:en-us+f3", "espeak-ng:en-us+klatt",
    "espeak-ng:en-us+Andy", "espeak-ng:en-us+Storm", "espeak-ng:en-us+grandma",
    "espeak-ng:en-us+Michael", "espeak-ng:en-us+Alicia", "flite:kal", "flite:awb",
    "flite:rms", "flite:slt", "festival:ked_diphone",
)
# Unseen speakers for zero-shot evaluation; they speak only in the test split (chosen:
# docs/synthetic_corpus.md).
HELDOUT_VOICES = ("flite:rms", "flite:awb", "festival:ked_diphone")
# More training speakers from the held-out voices' engines: festival's kal (diphone) and slt
# (HTS) and warped flite/festival voices (`/warp=`, vocal tract length perturbation), each
# at most 0.74 similar to any held-out voice (why: docs/synthetic_corpus.md).
EXTRA_TRAINING_VOICES = (
    "festival:kal_diphone", "festival:cmu_us_slt_arctic_hts",
    "festival:cmu_us_slt_arctic_hts/warp=80", "flite:slt/warp=80", "flite:kal/warp=90",
)


def get_config():
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.sample_rate = 24000
  c.num_utterances = 1000          # train split, spread evenly over the training voices
  c.num_heldout_utterances = 60    # test split, spread evenly over `heldout_voices`
  c.num_seen_voice_utterances = 0  # test_seen split: training voices say the test sentences
  c.min_words = 5
  c.max_words = 20
  c.workers = 0                    # processes; 0 = one per core
  c.chunk_size = 8                 # utterances per job (festival starts once per job)
  c.voices = list(VOICES + EXTRA_TRAINING_VOICES)
  c.heldout_voices = list(HELDOUT_VOICES)
  c.candidate_voices = list(CANDIDATE_VOICES)
  c.max_voice_similarity = 0.85    # --measure_voices keeps voices at most this similar
  return c
