"""Corpus layouts -> lists of items to process, per split.

Listing runs on the launching machine and touches only directory entries and manifests
(plus LibriSpeech's per-chapter transcript files); audio and per-item transcript files are
read by the Beam workers, so one bad file costs one item, never the job. Problems found while
listing (a malformed manifest row, a duplicate id, an audio file without transcript) are
returned as skips with a reason, like the workers' skips.

Layouts:
  folder       <source>/**/<name>.wav|.flac with <name>.txt beside it; or a TSV manifest with
               a header naming `path` and `text` (optional `id`, `speaker`, `lang`, `split`),
               paths relative to the manifest.
  libritts     <source>/<subset>/<speaker>/<chapter>/<utt>.wav + <utt>.normalized.txt
               (LibriTTS and LibriTTS-R).
  librispeech  <source>/<subset>/<speaker>/<chapter>/<utt>.flac + <speaker>-<chapter>.trans.txt;
               test-clean also gives the VALL-E paper's 4-10 s evaluation split.
  librilight   <source>/<subset>/<speaker>/<book>/<file>.flac, with a TSV manifest of
               transcripts (LibriLight ships none; e.g. from an ASR system), as for folder.
  libriheavy   LibriLight's long recordings cut into segments by Libriheavy's lhotse cut
               manifests (libriheavy_cuts_<split>.jsonl.gz: `start` / `duration` into the
               recording, transcript and speaker in `supervisions[0]`); one split per manifest.
"""
from __future__ import annotations

import csv
import dataclasses
import gzip
import json
import os
import re
from typing import Callable, Iterable

from absl import logging

from valle_jax.errors import UserError

AUDIO_EXTENSIONS = (".wav", ".flac")


@dataclasses.dataclass(frozen=True)
class Item:
  """One utterance to process. Exactly one of `text` / `text_file` is set."""
  id: str
  split: str
  audio: str                       # absolute path
  speaker: str
  lang: str
  text: str | None = None          # transcript known at listing time
  text_file: str | None = None     # UTF-8 transcript file read by the worker
  start_s: float | None = None     # the utterance is this segment of `audio` (seconds) ...
  duration_s: float | None = None  # ... ; None: the whole file


@dataclasses.dataclass(frozen=True)
class Skip:
  """An item left out, and why (`reason` is a short key used for counting)."""
  id: str
  split: str
  reason: str
  detail: str = ""


@dataclasses.dataclass
class Listing:
  items: list[Item] = dataclasses.field(default_factory=list)
  skips: list[Skip] = dataclasses.field(default_factory=list)
  # split -> (min_s, max_s) overriding the config's duration bounds for that split.
  bounds: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)

  def add(self, item: Item, seen: set[tuple[str, str]]) -> None:
    key = (item.split, item.id)
    if key in seen:
      self.skips.append(Skip(item.id, item.split, "duplicate_id", item.audio))
    else:
      seen.add(key)
      self.items.append(item)

  def splits(self) -> list[str]:
    return sorted({i.split for i in self.items} | set(self.bounds))


def split_name(name: str) -> str:
  """A TFDS split name (letters, digits, underscores): 'train-clean-100' -> 'train_clean_100'."""
  out = re.sub(r"\W", "_", name).strip("_")
  if not out:
    raise UserError(f"{name!r} cannot be a split name; use letters, digits and '_'.")
  return out


def _require_dir(path: str, what: str) -> str:
  if not os.path.isdir(path):
    raise UserError(f"{what} {path!r} is not a directory; set config.source to the corpus root.")
  return os.path.abspath(path)


def _walk_audio(root: str) -> Iterable[str]:
  """Audio files under `root`, in sorted order (listing order is deterministic)."""
  for d, dirs, files in os.walk(root):
    dirs.sort()
    for f in sorted(files):
      if f.lower().endswith(AUDIO_EXTENSIONS):
        yield os.path.join(d, f)


def read_manifest(manifest: str, lang: str, default_split: Callable[[str], str],
                  default_speaker: Callable[[str], str], root: str = "") -> Listing:
  """TSV with a header: `path` (or `audio`), `text` required; `id`, `speaker`, `lang`,
  `split` optional.

  `path` is relative to `root` (default: the manifest's directory) or absolute;
  `default_split(path)` / `default_speaker(path)` name the split / speaker when the row
  has none.
  """
  if not os.path.isfile(manifest):
    raise UserError(f"manifest {manifest!r} does not exist; set config.manifest to a TSV file.")
  base = root or os.path.dirname(os.path.abspath(manifest))
  out, seen = Listing(), set()
  with open(manifest, encoding="utf-8", errors="strict", newline="") as f:
    try:
      rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    except UnicodeDecodeError as e:
      raise UserError(f"manifest {manifest!r} is not UTF-8 ({e}); re-save it as UTF-8.") from None
  header = rows[0] if rows else []
  path_col = "path" if "path" in header else "audio"
  if path_col not in header or "text" not in header:
    raise UserError(f"manifest {manifest!r} needs a header row with `path` (or `audio`) and "
                    "`text` columns (tab-separated; optional: id, speaker, lang, split).")
  for lineno, row in enumerate(rows[1:], start=2):
    if not any(c.strip() for c in row):
      continue
    if len(row) != len(header):
      out.skips.append(Skip(f"{os.path.basename(manifest)}:{lineno}", "", "bad_manifest_row",
                            f"{len(row)} columns, header has {len(header)}"))
      continue
    r = dict(zip(header, row))
    rel = r[path_col]
    item_split = split_name(r.get("split") or default_split(rel))
    out.add(Item(id=r.get("id") or os.path.splitext(rel)[0], split=item_split,
                 audio=os.path.normpath(os.path.join(base, rel)),
                 speaker=r.get("speaker") or default_speaker(rel), lang=r.get("lang") or lang,
                 text=r["text"]), seen)
  return out


def _first_dir(rel: str) -> str:
  parts = rel.replace("\\", "/").split("/")
  return parts[0] if len(parts) > 1 else "unknown"


def list_folder(source: str, manifest: str = "", lang: str = "en-us",
                split: str = "train") -> Listing:
  """Folder corpus: sidecar .txt files, or a TSV manifest (see the module docstring).

  Speaker = the first directory below `source` (or the manifest's directory), else 'unknown'.
  """
  if manifest:
    return read_manifest(manifest, lang, lambda _: split, _first_dir)
  root = _require_dir(source, "folder corpus")
  out, seen = Listing(), set()
  for path in _walk_audio(root):
    rel = os.path.relpath(path, root)
    item_id = os.path.splitext(rel)[0].replace(os.sep, "/")
    text_file = os.path.splitext(path)[0] + ".txt"
    if not os.path.isfile(text_file):
      out.skips.append(Skip(item_id, split_name(split), "missing_transcript", text_file))
      continue
    out.add(Item(item_id, split_name(split), path, _first_dir(rel), lang,
                 text_file=text_file), seen)
  if not out.items and not out.skips:
    raise UserError(f"no .wav or .flac files under {root!r}; check config.source.")
  out.skips += _strays(root, split_name(split))
  return out


def _strays(root: str, split: str) -> list[Skip]:
  """What a folder scan leaves out besides audio: transcripts with no audio beside them
  ("missing_audio") and files of other kinds ("unexpected_extension"), so they are counted
  in the report instead of vanishing."""
  skips = []
  for d, dirs, files in os.walk(root):
    dirs.sort()
    stems = {os.path.splitext(f)[0] for f in files if f.lower().endswith(AUDIO_EXTENSIONS)}
    for f in sorted(files):
      path, (stem, ext) = os.path.join(d, f), os.path.splitext(f)
      rel = os.path.relpath(path, root).replace(os.sep, "/")
      if f.startswith(".") or ext.lower() in AUDIO_EXTENSIONS:
        continue
      if ext.lower() == ".txt":
        if stem not in stems:
          skips.append(Skip(os.path.splitext(rel)[0], split, "missing_audio", path))
      else:
        skips.append(Skip(rel, split, "unexpected_extension", path))
  return skips


def _subset_dirs(root: str, subsets: Iterable[str]) -> list[tuple[str, str]]:
  subsets = list(subsets) or sorted(d for d in os.listdir(root)
                                    if os.path.isdir(os.path.join(root, d)))
  out = []
  for s in subsets:
    d = os.path.join(root, s)
    if not os.path.isdir(d):
      raise UserError(f"subset {s!r} is not a directory under {root!r}; fix config.subsets.")
    out.append((s, d))
  return out


def list_libritts(source: str, subsets: Iterable[str] = (), lang: str = "en-us",
                  transcript: str = "normalized") -> Listing:
  """LibriTTS / LibriTTS-R: one split per subset; `transcript` 'normalized' or 'original'."""
  if transcript not in ("normalized", "original"):
    raise UserError(f"config.transcript must be 'normalized' or 'original', not {transcript!r}.")
  root = _require_dir(source, "LibriTTS root")
  out, seen = Listing(), set()
  for subset, d in _subset_dirs(root, subsets):
    split = split_name(subset)
    for path in _walk_audio(d):
      stem = os.path.splitext(path)[0]
      rel = os.path.relpath(path, d).split(os.sep)
      text_file = f"{stem}.{transcript}.txt"
      if not os.path.isfile(text_file):
        out.skips.append(Skip(os.path.basename(stem), split, "missing_transcript", text_file))
        continue
      out.add(Item(os.path.basename(stem), split, path, rel[0] if len(rel) > 1 else "unknown",
                   lang, text_file=text_file), seen)
  return out


# The VALL-E paper evaluates on LibriSpeech test-clean utterances of 4 to 10 seconds.
TEST_CLEAN_4_10S = "test_clean_4_10s"


def list_librispeech(source: str, subsets: Iterable[str] = (), lang: str = "en-us",
                     test_4_10s: bool = True) -> Listing:
  """LibriSpeech: one split per subset, plus `test_clean_4_10s` when test-clean is listed
  (same utterances, bounded to 4-10 s). Transcripts are lower-cased (they ship in capitals,
  which espeak-ng may spell out letter by letter)."""
  root = _require_dir(source, "LibriSpeech root")
  out, seen = Listing(), set()
  for subset, d in _subset_dirs(root, subsets):
    splits = [split_name(subset)]
    if subset == "test-clean" and test_4_10s:
      splits.append(TEST_CLEAN_4_10S)
      out.bounds[TEST_CLEAN_4_10S] = (4.0, 10.0)
    for chapter_dir, _, files in sorted(os.walk(d)):
      for trans in sorted(f for f in files if f.endswith(".trans.txt")):
        trans_path = os.path.join(chapter_dir, trans)
        try:
          with open(trans_path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        except (UnicodeDecodeError, OSError) as e:
          for split in splits:
            out.skips.append(Skip(trans, split, "unreadable_transcript", f"{trans_path}: {e}"))
          continue
        for line in lines:
          utt, _, text = line.strip().partition(" ")
          if not utt:
            continue
          audio = os.path.join(chapter_dir, f"{utt}.flac")
          for split in splits:
            out.add(Item(utt, split, audio, utt.split("-")[0], lang, text=text.lower()), seen)
  return out


def librispeech_test_list(root: str) -> tuple[list[dict[str, str]], tuple[float, float]]:
  """The paper's test set as test-list rows (id, audio, text, speaker; what
  `valle_jax.evaluate.read_test_list` gives): every LibriSpeech test-clean utterance under
  `root` that `list_librispeech` lists, and the (4, 10) s bounds of its `test_clean_4_10s`
  split. Items it skips are logged."""
  if not os.path.isdir(os.path.join(root, "test-clean")):
    raise UserError(f"{root!r} holds no test-clean folder; pass the LibriSpeech folder "
                    "that does.")
  listing = list_librispeech(root, ["test-clean"])
  for skip in listing.skips:
    if skip.split == TEST_CLEAN_4_10S:
      logging.warning("left out %s (%s): %s", skip.id, skip.reason, skip.detail)
  rows = [{"id": i.id, "audio": i.audio, "text": i.text, "speaker": i.speaker}
          for i in listing.items if i.split == TEST_CLEAN_4_10S]
  return rows, listing.bounds[TEST_CLEAN_4_10S]


def list_librilight(source: str, manifest: str, lang: str = "en-us") -> Listing:
  """LibriLight: audio under <source>/<subset>/<speaker>/<book>/, transcripts from a TSV
  manifest with paths relative to `source`; split = the subset directory, speaker = the
  directory below it (unless the manifest has `split` / `speaker` columns)."""
  root = _require_dir(source, "LibriLight root")
  if not manifest:
    raise UserError("LibriLight ships no transcripts: use the libriheavy corpus "
                    "(configs/data/libriheavy.py, Libriheavy's cut manifests), or set "
                    "config.manifest to a TSV with `path` and `text` columns.")

  def part(k: int) -> Callable[[str], str]:
    return lambda rel: (rel.replace("\\", "/").split("/") + ["unknown"] * 3)[k]

  return read_manifest(manifest, lang, part(0), part(1), root=root)


def _libriheavy_split(manifest: str) -> str:
  """'libriheavy_cuts_test_clean.jsonl.gz' -> 'test_clean'; other names: the file's stem."""
  name = os.path.basename(manifest)
  for suffix in (".gz", ".jsonl", ".json"):
    name = name.removesuffix(suffix)
  return split_name(name.removeprefix("libriheavy_cuts_"))


def _libriheavy_item(cut: dict, root: str, prefix: str, split: str, lang: str) -> Item:
  """One MonoCut of a Libriheavy manifest -> Item; raises KeyError / TypeError /
  ValueError (with a message) for a cut this reader cannot use."""
  if not isinstance(cut, dict) or not cut["supervisions"]:
    raise ValueError("not a cut with supervisions")
  recording, sup = cut["recording"], cut["supervisions"][0]
  source = recording["sources"][0]
  if source.get("type", "file") != "file":
    raise ValueError(f"audio source of type {source['type']!r}, not a file")
  path = source["source"]
  if not os.path.isabs(path):
    if prefix and path.startswith(prefix.rstrip("/") + "/"):
      path = path[len(prefix.rstrip("/")) + 1:]
    path = os.path.normpath(os.path.join(root, path))
  text = sup.get("text")
  if not isinstance(text, str):  # the raw release: [cased + punctuated, ASR]
    text = sup.get("custom", {}).get("texts", [None])[0]
  if not isinstance(text, str):
    raise KeyError("text")
  start, duration = float(cut["start"]), float(cut["duration"])
  if start < 0 or duration <= 0:
    raise ValueError(f"start {start} s, duration {duration} s")
  rec_parts = recording["id"].split("/")
  speaker = sup.get("speaker") or (rec_parts[1] if len(rec_parts) > 2 else "unknown")
  return Item(id=cut["id"], split=split, audio=path, speaker=str(speaker), lang=lang,
              text=text, start_s=start, duration_s=duration)


def list_libriheavy(source: str, manifests: Iterable[str], lang: str = "en-us",
                    path_prefix: str = "download/librilight") -> Listing:
  """Libriheavy: each cut manifest (JSONL, gzipped or not) is one split named after its file
  (`libriheavy_cuts_small.jsonl.gz` -> `small`). A cut's audio is `recording.sources[0]`,
  relative paths with `path_prefix` (the release's hard-coded download folder) replaced by
  `source`, the LibriLight root; the segment is the cut's `start` / `duration`; the text is
  `supervisions[0].text`, else `supervisions[0].custom.texts[0]` (the raw release's cased,
  punctuated book text). Audio is read by the workers: a missing file or a span outside it
  is skipped there."""
  root = _require_dir(source, "LibriLight root")
  manifests = [manifests] if isinstance(manifests, str) else list(manifests)
  if not manifests:
    raise UserError("set config.manifests to one or more Libriheavy cut manifests "
                    "(libriheavy_cuts_<split>.jsonl.gz).")
  out, seen = Listing(), set()
  for manifest in manifests:
    if not os.path.isfile(manifest):
      raise UserError(f"manifest {manifest!r} does not exist; fix config.manifests.")
    split = _libriheavy_split(manifest)
    opener = gzip.open if manifest.endswith(".gz") else open
    try:
      with opener(manifest, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
          if not line.strip():
            continue
          where = f"{os.path.basename(manifest)}:{lineno}"
          try:
            cut = json.loads(line)
            item = _libriheavy_item(cut, root, path_prefix, split, lang)
          except json.JSONDecodeError as e:
            out.skips.append(Skip(where, split, "bad_manifest_row", f"not JSON: {e}"))
          except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
            detail = f"no {e} in the cut" if isinstance(e, KeyError) else str(e)
            item_id = cut.get("id") if isinstance(cut, dict) else None
            out.skips.append(Skip(str(item_id or where), split, "bad_manifest_row", detail))
          else:
            out.add(item, seen)
    except (OSError, EOFError, UnicodeDecodeError) as e:
      raise UserError(f"cannot read manifest {manifest!r} ({e}); download it again.") from None
  return out
