"""Text front end: normalisation, phonemes (phonemizer + espeak-ng) and the symbol table.

    text ──normalize──▶ words ──espeak-ng──▶ phone symbols ──SymbolTable──▶ int32 ids [L]

* `normalize(text, lang)` expands numbers, ordinals, years and currency into words (through
  `num2words`, for every language it supports; digits are left to espeak-ng otherwise) and
  tidies whitespace. Punctuation is kept: it becomes symbols the model can use for prosody.
* `phonemize(text, lang)` returns the phone symbols of one text: espeak-ng phones with the
  stress marks `ˈ ˌ` as symbols of their own, `WORD` between words, and punctuation marks as
  symbols. One espeak-ng backend per language and process is created on first use and reused
  (creating one per call is twice as slow). Texts are phonemized one per call: phonemizer's
  list mode drops empty lines and splits lines at some punctuation, which would misalign a
  batch, and one call costs about 0.3 ms.
* `SymbolTable` maps symbols to ids. Ids 0..4 are `<pad>`, `<bos>`, `<eos>`, `<unk>` and the
  word boundary; then punctuation, stress marks, the espeak-ng English phones, every single
  IPA character, and one `<lang:xx>` symbol per espeak-ng language. That default list is a
  constant, so ids are the same in every run and process; `SymbolTable.extend` appends
  (existing ids never move). A dataset stores its table as `symbols.json`; training and
  inference load that file, never the default, so a later change of the default cannot
  silently change an existing dataset's ids. A phone that is not in the table is encoded as
  its characters when all of them are known (any language works); otherwise
  `UnknownSymbolError` names the symbol and the text it came from.
* `join_prompt_and_text(prompt_ids, text_ids, table)` is the one zero-shot phoneme layout
  (prompt transcript, then the text), used by training pairs and by synthesis alike.
"""
from __future__ import annotations

import json
import logging
import os
import re
import threading
import unicodedata
from typing import Iterable, Sequence

import numpy as np

from valle_jax import paths
from valle_jax.errors import UserError

PAD, BOS, EOS, UNK, WORD = "<pad>", "<bos>", "<eos>", "<unk>", "<wb>"
SPECIALS = (PAD, BOS, EOS, UNK, WORD)
STRESS = ("ˈ", "ˌ")
# Punctuation kept as symbols (phonemizer's default marks; apostrophes and hyphens are
# parts of words for espeak-ng, so they are not punctuation here).
PUNCTUATION = tuple(';:,.!?¡¿—…"«»“”(){}[]')
# espeak-ng's phones for English (en-us, en-gb), stress marks removed.
ENGLISH_PHONES = (
    "a aɪ aɪə aɪɚ aʊ aʊə aʊɚ æ ɐ ɑ ɑː ɑːɹ ɑ̃ e eɪ eə ɛ ɛɹ ɛə ə əl əʊ ɚ ɜ ɜː ɜːɹ ɪ ɪɹ ɪə ɪɚ "
    "i iː iə i@ o oʊ oː oːɹ ɔ ɔː ɔːɹ ɔɪ ɔɚ ɔ̃ ɒ ʊ ʊɹ ʊə ʊɚ u uː ʌ ᵻ "
    "b d dʒ f h j k l m n n̩ ŋ p ɹ s ʃ t tʃ θ ð v w z ʒ ɡ ɾ ʔ x ɬ ç r ʍ"
).split()
# Single IPA characters, so a phone of any language can fall back to its characters.
IPA_CHARS = tuple(
    [chr(c) for c in range(ord("a"), ord("z") + 1)]
    + list("æçðøħŋœɶθβχɸʁʀɬɮʎʟɲɳɴɻɽʂʐʑɕʝɣɰɥʋⱱʙʜʢʡɦɧɓɗʄɠʛʘǀǃǂǁᵻᵿɐɑɒɘɚɛɜɝɞɤɨɪɯɵɷʉʊʌʏ")
    + [chr(c) for c in range(0x0250, 0x02B0)]  # IPA Extensions
    + list("ʰʲʷˠˤⁿˡʼːˑ˞-'0123456789")  # modifiers, length, elision marks, tone numbers
    + [chr(c) for c in range(0x0300, 0x0370)]  # combining diacritics (nasal, syllabic, ...)
)
# Languages of espeak-ng 1.51 (`espeak-ng --voices`); each gets a `<lang:xx>` symbol.
ESPEAK_LANGUAGES = (
    "af am an ar as az ba be bg bn bpy bs ca chr-US-Qaaa-x-west cmn cmn-latn-pinyin cs cv cy "
    "da de el en-029 en-gb en-gb-scotland en-gb-x-gbclan en-gb-x-gbcwmd en-gb-x-rp en-us "
    "en-us-nyc eo es es-419 et eu fa fa-latn fi fr-be fr-ch fr-fr ga gd gn grc gu hak haw he "
    "hi hr ht hu hy hyw ia id io is it ja jbo ka kk kl kn ko kok ku ky la lb lfn lt ltg lv mi "
    "mk ml mr ms mt my nb nci ne nl nog om or pa pap piqd pl pt pt-br py qdb qu quc qya ro ru "
    "ru-lv sd shn si sjn sk sl smj sq sr sv sw ta te th tk tn tr tt ug uk ur uz vi "
    "vi-vn-x-central vi-vn-x-south yue"
).split()


def lang_symbol(lang: str) -> str:
  return f"<lang:{lang}>"


def _default_symbols() -> list[str]:
  out: list[str] = []
  for s in (*SPECIALS, *PUNCTUATION, *STRESS, *ENGLISH_PHONES, *IPA_CHARS,
            *(lang_symbol(l) for l in ESPEAK_LANGUAGES)):
    if s not in out:
      out.append(s)
  return out


class UnknownSymbolError(UserError):
  """A phone symbol the table does not know; the message names it and its source text."""

  def __init__(self, symbols: Sequence[str], text: str | None):
    self.symbols = list(symbols)
    self.text = text
    src = f" in the phonemes of {text!r}" if text is not None else ""
    super().__init__(
        f"unknown phoneme symbol(s) {self.symbols}{src}; add them with "
        "SymbolTable.extend (config `extra_symbols` in data prep) or fix the text.")


class SymbolTable:
  """Bidirectional symbol <-> id map with fixed special ids (pad = 0).

  Ids are positions in `symbols`; `extend` only appends, so ids never move.
  """

  VERSION = 1

  def __init__(self, symbols: Sequence[str]):
    if tuple(symbols[:len(SPECIALS)]) != SPECIALS:
      raise UserError(f"a symbol table must start with {list(SPECIALS)}; "
                      "rebuild symbols.json with valle_jax.text.SymbolTable.default().")
    if len(set(symbols)) != len(symbols):
      dup = sorted({s for s in symbols if list(symbols).count(s) > 1})
      raise UserError(f"duplicate symbols {dup} in the symbol table; remove them.")
    self.symbols: list[str] = list(symbols)
    self._ids = {s: i for i, s in enumerate(self.symbols)}

  @classmethod
  def default(cls, extra: Iterable[str] = ()) -> "SymbolTable":
    table = cls(_default_symbols())
    table.extend(extra)
    return table

  # --- ids -------------------------------------------------------------------------------
  def __len__(self) -> int:
    return len(self.symbols)

  def __contains__(self, symbol: str) -> bool:
    return symbol in self._ids

  def __eq__(self, other) -> bool:
    return isinstance(other, SymbolTable) and self.symbols == other.symbols

  pad_id = property(lambda self: self._ids[PAD])
  bos_id = property(lambda self: self._ids[BOS])
  eos_id = property(lambda self: self._ids[EOS])
  unk_id = property(lambda self: self._ids[UNK])
  word_id = property(lambda self: self._ids[WORD])

  def lang_id(self, lang: str) -> int:
    try:
      return self._ids[lang_symbol(lang)]
    except KeyError:
      raise UserError(f"language {lang!r} has no id in the symbol table; use an espeak-ng "
                      "language code (`espeak-ng --voices`) or extend the table.") from None

  def extend(self, symbols: Iterable[str]) -> list[str]:
    """Appends the symbols not yet in the table; returns those added."""
    added = []
    for s in symbols:
      if s not in self._ids:
        self._ids[s] = len(self.symbols)
        self.symbols.append(s)
        added.append(s)
    return added

  def encode(self, symbols: Sequence[str], text: str | None = None) -> np.ndarray:
    """Phone symbols -> int32 ids [L]. A phone missing from the table is encoded as its
    characters when all are known; otherwise raises `UnknownSymbolError` naming `text`."""
    ids, unknown = [], []
    for s in symbols:
      if s in self._ids:
        ids.append(self._ids[s])
      elif s and all(c in self._ids for c in s):
        ids.extend(self._ids[c] for c in s)
      else:
        unknown.append(s)
    if unknown:
      raise UnknownSymbolError(unknown, text)
    return np.asarray(ids, dtype=np.int32)

  def decode(self, ids: Iterable[int]) -> list[str]:
    """int ids -> symbols (an id outside the table gives `<unk>`)."""
    n = len(self.symbols)
    return [self.symbols[i] if 0 <= i < n else UNK for i in (int(i) for i in ids)]

  # --- files -----------------------------------------------------------------------------
  def to_json(self) -> str:
    return json.dumps({"version": self.VERSION, "symbols": self.symbols}, ensure_ascii=False,
                      indent=0)

  def save(self, path: str | os.PathLike) -> None:
    """Writes `symbols.json` (atomically: a temporary file renamed into place)."""
    tmp = f"{os.fspath(path)}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(self.to_json())
    os.replace(tmp, path)

  @classmethod
  def load(cls, path: str | os.PathLike) -> "SymbolTable":
    try:
      with paths.path(path).open(encoding="utf-8") as f:
        data = json.load(f)
    except FileNotFoundError:
      raise UserError(f"symbol table {os.fspath(path)!r} does not exist; point to the "
                      "symbols.json of a prepared dataset.") from None
    except (ValueError, UnicodeDecodeError) as e:
      raise UserError(f"symbol table {os.fspath(path)!r} is not valid JSON ({e}); "
                      "re-create it with `valle-jax prepare`.") from None
    if not isinstance(data, dict) or data.get("version") != cls.VERSION:
      raise UserError(f"{os.fspath(path)!r} is not a version-{cls.VERSION} symbol table; "
                      "re-create it with `valle-jax prepare`.")
    return cls(data["symbols"])


# --- normalisation --------------------------------------------------------------------------
_CURRENCY = {"$": "USD", "£": "GBP", "€": "EUR"}
_NUM = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"  # 12, 1,000, 3.5 (commas group thousands)
_RE_CURRENCY = re.compile(rf"([$£€])\s?({_NUM})")
_RE_ORDINAL = re.compile(r"\b(\d+)(st|nd|rd|th)\b", re.IGNORECASE)
_RE_PERCENT = re.compile(rf"({_NUM})\s?%")
_RE_NUMBER = re.compile(_NUM)
_RE_SPACE = re.compile(r"\s+")
_PERCENT_WORD = {"en": "percent", "de": "Prozent", "fr": "pour cent", "es": "por ciento"}


def _num2words_lang(lang: str) -> str | None:
  """espeak-ng code -> num2words code (en-us -> en, pt-br -> pt_BR), None if unsupported."""
  try:
    from num2words import CONVERTER_CLASSES  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  parts = lang.replace("_", "-").split("-")
  for cand in (f"{parts[0]}_{parts[1].upper()}" if len(parts) > 1 else None, parts[0]):
    if cand in CONVERTER_CLASSES:
      return cand
  return None


def normalize(text: str, lang: str = "en-us") -> str:
  """Expands numbers (cardinals, decimals, ordinals, years, currency, percent) into words of
  `lang` where num2words supports it, and collapses whitespace. Punctuation is kept."""
  text = unicodedata.normalize("NFC", text)
  nl = _num2words_lang(lang)
  if nl is not None:
    from num2words import num2words  # pylint: disable=g-import-not-at-top

    def number(s: str, **kw) -> str:
      s = s.replace(",", "")
      value = float(s) if "." in s else int(s)
      return num2words(value, lang=nl, **kw)

    def currency(m: re.Match) -> str:
      try:
        return number(m.group(2), to="currency", currency=_CURRENCY[m.group(1)])
      except NotImplementedError:
        return f"{number(m.group(2))} {m.group(1)}"

    def cardinal(m: re.Match) -> str:
      s = m.group(0)
      if len(s) == 4 and s.isdigit() and 1100 <= int(s) <= 2099 and nl.startswith("en"):
        return number(s, to="year")
      return number(s)

    text = _RE_CURRENCY.sub(currency, text)
    if nl.startswith("en"):
      text = _RE_ORDINAL.sub(lambda m: number(m.group(1), to="ordinal"), text)
    pct = _PERCENT_WORD.get(nl.split("_")[0])
    if pct:
      text = _RE_PERCENT.sub(lambda m: f"{m.group(1)} {pct}", text)
    text = _RE_NUMBER.sub(cardinal, text)
  return _RE_SPACE.sub(" ", text).strip()


# --- phonemes ---------------------------------------------------------------------------------
_BACKENDS: dict[str, tuple[object, threading.Lock]] = {}
_BACKENDS_LOCK = threading.Lock()
_PHONE_SEP, _WORD_SEP = " ", "  "
_PUNCT_SET = frozenset(PUNCTUATION)


def _backend(lang: str):
  """The process's espeak-ng backend for `lang` (created once, with a lock for threads)."""
  with _BACKENDS_LOCK:
    if lang not in _BACKENDS:
      try:
        from phonemizer.backend import EspeakBackend  # pylint: disable=g-import-not-at-top
      except ImportError:
        raise UserError("phonemizer is not installed; run `pip install -e .[data]` "
                        "(and `apt-get install espeak-ng`).") from None
      if not EspeakBackend.is_available():
        raise UserError("espeak-ng is not installed; run `apt-get install espeak-ng` "
                        "(scripts/install.sh does).")
      if not EspeakBackend.is_supported_language(lang):
        raise UserError(f"espeak-ng does not support language {lang!r}; pick one of "
                        "`espeak-ng --voices`.")
      # espeak-ng joins or splits some words ("of the"); phonemizer warns about each such
      # line, which is expected here and would flood a data-prep log: errors only.
      quiet = logging.getLogger("valle_jax.phonemizer")
      quiet.setLevel(logging.ERROR)
      _BACKENDS[lang] = (EspeakBackend(lang, preserve_punctuation=True, with_stress=True,
                                       punctuation_marks="".join(PUNCTUATION),
                                       language_switch="remove-flags", logger=quiet),
                         threading.Lock())
    return _BACKENDS[lang]


def _split_phone(token: str) -> list[str]:
  """'ˈoʊ,' -> ['ˈ', 'oʊ', ','] (stress and punctuation become symbols of their own)."""
  lead: list[str] = []
  trail: list[str] = []
  while token and token[0] in _PUNCT_SET:
    lead.append(token[0])
    token = token[1:]
  while token and token[-1] in _PUNCT_SET:
    trail.insert(0, token[-1])
    token = token[:-1]
  core: list[str] = []
  while token and token[0] in STRESS:
    core.append(token[0])
    token = token[1:]
  if token:
    core.append(token)
  return lead + core + trail


def phonemize(text: str, lang: str = "en-us", *, normalized: bool = False) -> list[str]:
  """One text -> phone symbols: phones, stress marks, `WORD` between words, punctuation.

  The text is normalised first unless `normalized`. An empty result means the text has no
  speakable content.
  """
  if not normalized:
    text = normalize(text, lang)
  if not text:
    return []
  from phonemizer.separator import Separator  # pylint: disable=g-import-not-at-top
  backend, lock = _backend(lang)
  with lock:
    (out,) = backend.phonemize([text], separator=Separator(phone=_PHONE_SEP, word=_WORD_SEP),
                               strip=True, njobs=1)
  symbols: list[str] = []
  for word in out.split(_WORD_SEP):
    phones = [s for tok in word.split(_PHONE_SEP) if tok for s in _split_phone(tok)]
    if not phones:
      continue
    if symbols:
      symbols.append(WORD)
    symbols.extend(phones)
  return symbols


def text_to_ids(text: str, table: SymbolTable, lang: str = "en-us") -> np.ndarray:
  """text -> int32 phoneme ids [L] (no BOS/EOS/language id: the model's data code adds
  those). Raises `UnknownSymbolError` naming the text when a symbol is not in `table`."""
  return table.encode(phonemize(text, lang), text=text)


def join_prompt_and_text(prompt_ids: Sequence[int], text_ids: Sequence[int],
                         table: SymbolTable) -> tuple[np.ndarray, int]:
  """The zero-shot phoneme layout: the prompt transcript's ids less the punctuation it ends
  with, a word boundary, then the text's ids, as if the two were one sentence.

  Training pairs (data.py, `same_speaker_pairs`) and zero-shot synthesis both build their
  phonemes here, so the model is sampled on the layout it was trained on. One sentence
  because that is what a model trained on single utterances (the paper's) has seen: its
  final "." comes only right before EOS (with the prompt's "." kept, the demo's model ended
  at once), and consecutive words are always split by a word boundary.
  Returns (ids int32 [L], how many of them come before the text).
  """
  prompt = np.asarray(prompt_ids, np.int32)
  symbols = table.decode(prompt)
  end = len(symbols)
  while end and symbols[end - 1] in _PUNCT_SET:
    end -= 1
  heard = np.append(prompt[:end], np.int32(table.word_id))
  return np.concatenate([heard, np.asarray(text_ids, np.int32)]).astype(np.int32), len(heard)
