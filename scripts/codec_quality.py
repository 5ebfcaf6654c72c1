"""Measures the offline codec on a corpus split (held-out voices): WER, SIM, distortion, speed.

    python scripts/codec_quality.py --codec=CODEC_DIR --corpus=CORPUS [--limit=60]
        [--png_dir=docs] [--num_png=3]

Systems scored against the original recordings with the offline scorers
(`valle_jax.metrics`: PocketSphinx WER via jiwer, resemblyzer similarity, log-mel spectral
distortion): the original itself, WORLD resynthesis of unquantised features, and the codec
with the first 1..8 codebooks. Also prints the F0 error (cents, frames voiced in both),
codebook use, and encode / decode speed as multiples of real time in this one process.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np
from absl import app, flags
from tqdm import tqdm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from data_prep.synthetic import read_manifest  # noqa: E402  pylint: disable=g-import-not-at-top
from valle_jax import metrics  # noqa: E402  pylint: disable=g-import-not-at-top
from valle_jax.audio import load_audio, log_mel  # noqa: E402  pylint: disable=g-import-not-at-top
from valle_jax.codec import offline  # noqa: E402  pylint: disable=g-import-not-at-top

_CODEC = flags.DEFINE_string("codec", None, "Directory of a fitted offline codec.")
_CORPUS = flags.DEFINE_string("corpus", None, "A corpus made by `valle-jax make-corpus`.")
_SPLIT = flags.DEFINE_string("split", "test", "Its split to score (held-out voices: test).")
_LIMIT = flags.DEFINE_integer("limit", 60, "Utterances to score (the first N).")
_PNG_DIR = flags.DEFINE_string("png_dir", None, "Write spectrogram comparison PNGs here.")
_NUM_PNG = flags.DEFINE_integer("num_png", 3, "How many PNGs.")
_CODEBOOKS = flags.DEFINE_list("codebooks", ["1", "2", "3", "4", "5", "6", "7", "8"],
                               "Numbers of codebooks to score.")


def f0_error_cents(a: np.ndarray, b: np.ndarray) -> float:
  """RMS log-F0 difference in cents over frames voiced in both feature arrays."""
  both = (a[:, 1] > 0.5) & (b[:, 1] > 0.5)
  return float(1200 / np.log(2) * np.sqrt(np.mean((a[both, 0] - b[both, 0]) ** 2)))


def spectrogram_png(path: str, title: str, wavs: dict[str, np.ndarray], sr: int) -> None:
  """Log-mel spectrograms stacked one per system, small enough for the docs (< 200 KB)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(len(wavs), 1, figsize=(7, 1.5 * len(wavs)), sharex=True)
  for ax, (name, wav) in zip(axes, wavs.items()):
    mel = log_mel(wav, sr)
    ax.imshow(mel.T, origin="lower", aspect="auto", cmap="magma",
              vmin=mel.max() - 80, vmax=mel.max(), extent=(0, len(wav) / sr, 0, mel.shape[1]))
    ax.set_ylabel(name, fontsize=8)
    ax.set_yticks([])
  axes[0].set_title(title, fontsize=8)
  axes[-1].set_xlabel("seconds", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=72)
  plt.close(fig)
  from PIL import Image  # pylint: disable=g-import-not-at-top  (matplotlib's dependency)
  Image.open(path).convert("RGB").quantize(colors=48).save(path, optimize=True)


def main(argv):
  del argv
  codec = offline.OfflineCodec.load(_CODEC.value)
  rows = read_manifest(_CORPUS.value, _SPLIT.value)[:_LIMIT.value]
  sr = offline.SAMPLE_RATE
  wavs = [load_audio(r["audio"], sr) for r in rows]
  texts = [r["text"] for r in rows]
  seconds = sum(len(w) for w in wavs) / sr
  asr, spk = metrics.get_asr(), metrics.get_speaker_encoder()

  feats, codes, enc_s, dec_s, decoded = [], [], 0.0, 0.0, []
  for w in tqdm(wavs, desc="encode+decode"):
    t = time.perf_counter()
    f = codec.analyze(w, sr)
    c = codec.quantize(f)
    enc_s += time.perf_counter() - t
    t = time.perf_counter()
    decoded.append(codec.decode(c)[:len(w)])
    dec_s += time.perf_counter() - t
    feats.append(f)
    codes.append(c)
  all_codes = np.concatenate(codes)
  used = [len(np.unique(all_codes[:, q])) for q in range(codec.num_codebooks)]

  embs = [spk.embed(w, sr) for w in wavs]
  systems = {"original": wavs,
             "WORLD, unquantised": [offline.synthesize(f, codec.features)[:len(w)]
                                    for f, w in zip(feats, wavs)]}
  f0_err = {"WORLD, unquantised": 0.0}
  for q in (int(x) for x in _CODEBOOKS.value):
    name = f"codec, {q} codebook" + ("s" if q > 1 else "")
    recon = [codec.dequantize(c[:, :q]) for c in codes]
    f0_err[name] = float(np.mean([f0_error_cents(f, g) for f, g in zip(feats, recon)]))
    systems[name] = (decoded if q == codec.num_codebooks else
                     [offline.synthesize(g, codec.features)[:len(w)] for g, w in zip(recon, wavs)])

  print(f"\n{len(rows)} utterances, {seconds / 60:.1f} min, speakers "
        f"{sorted({r['speaker'] for r in rows})}; codec {codec.checksum()}")
  print("\n| system | WER | SIM to original | spectral distortion (dB) | F0 error (cents) |")
  print("|---|---|---|---|---|")
  for name, outs in tqdm(systems.items(), desc="scoring"):
    s = metrics.score_resynthesis(texts, wavs, outs, sr, asr, spk, embs)
    f0 = f"{f0_err[name]:.0f}" if name in f0_err else ""
    print(f"| {name} | {s.wer:.3f} | {s.similarity:.3f} | {s.distortion_db:.2f} | {f0} |",
          flush=True)
  print(f"\nencode {seconds / enc_s:.1f}x real time, decode {seconds / dec_s:.1f}x real time "
        "(one process)")
  print(f"codebook entries used on this split: {used}")

  if _PNG_DIR.value:
    os.makedirs(_PNG_DIR.value, exist_ok=True)
    for i in range(min(_NUM_PNG.value, len(rows))):
      path = os.path.join(_PNG_DIR.value, f"offline_codec_{rows[i]['id']}.png")
      spectrogram_png(path, f"{rows[i]['speaker']}: {texts[i]}",
                      {"original": wavs[i], "WORLD": systems["WORLD, unquantised"][i],
                       "8 codebooks": decoded[i],
                       "1 codebook": systems.get("codec, 1 codebook", decoded)[i]}, sr)
      print(f"wrote {path} ({os.path.getsize(path) // 1024} KB)")


if __name__ == "__main__":
  flags.mark_flags_as_required(["codec", "corpus"])
  app.run(main)
