"""Text front end: normalisation, phonemes, the symbol table and its stability."""
import json
import subprocess
import sys

import numpy as np
import pytest

from valle_jax import text
from valle_jax.errors import UserError


def test_special_ids_are_fixed():
  table = text.SymbolTable.default()
  assert (table.pad_id, table.bos_id, table.eos_id, table.unk_id, table.word_id) == (0, 1, 2, 3, 4)
  assert table.lang_id("en-us") != table.lang_id("fr-fr")
  with pytest.raises(UserError, match="klingon"):
    table.lang_id("klingon")


def test_normalize_expands_numbers_and_keeps_punctuation():
  out = text.normalize("I paid $3.50 on the 2nd of May, 1999; 50% off 1,000 items!")
  assert out == ("I paid three dollars, fifty cents on the second of May, nineteen "
                 "ninety-nine; fifty percent off one thousand items!")
  assert text.normalize("  a \n b  ") == "a b"
  assert "quarante-deux" in text.normalize("42 ans", "fr-fr")


def test_phonemize_marks_stress_words_and_punctuation():
  symbols = text.phonemize("Hello, world!")
  assert symbols == ["h", "ə", "l", "ˈ", "oʊ", ",", text.WORD, "w", "ˈ", "ɜː", "l", "d", "!"]
  assert text.phonemize("") == []


def test_ids_round_trip():
  table = text.SymbolTable.default()
  symbols = text.phonemize("The quick brown fox — it's forty-two (really) years old?")
  ids = table.encode(symbols)
  assert ids.dtype == np.int32
  assert table.decode(ids) == symbols


def test_other_languages_fall_back_to_characters():
  table = text.SymbolTable.default()
  symbols = text.phonemize("Привет, мир", "ru")
  ids = table.encode(symbols)
  assert "".join(table.decode(ids)) == "".join(symbols)


def test_unknown_symbol_names_the_text():
  table = text.SymbolTable.default()
  with pytest.raises(text.UnknownSymbolError, match="bad words") as e:
    table.encode(["h", "☃"], text="bad words")
  assert e.value.symbols == ["☃"]


def test_extend_appends_without_moving_ids(tmp_path):
  table = text.SymbolTable.default()
  before = list(table.symbols)
  assert table.extend(["☃", "h"]) == ["☃"]
  assert table.symbols[:len(before)] == before and table.symbols[-1] == "☃"
  table.save(tmp_path / "symbols.json")
  assert text.SymbolTable.load(tmp_path / "symbols.json") == table


def test_load_rejects_bad_files(tmp_path):
  (tmp_path / "bad.json").write_text("{not json")
  with pytest.raises(UserError, match="not valid JSON"):
    text.SymbolTable.load(tmp_path / "bad.json")
  (tmp_path / "old.json").write_text(json.dumps({"version": 0, "symbols": []}))
  with pytest.raises(UserError, match="version-1"):
    text.SymbolTable.load(tmp_path / "old.json")
  with pytest.raises(UserError, match="does not exist"):
    text.SymbolTable.load(tmp_path / "missing.json")


SENTENCE = "Mr. Smith's 3 cats, aged 12, ate 1.5 kilograms; wow!"


def test_ids_stable_across_processes():
  code = ("import json; from valle_jax import text; t = text.SymbolTable.default(); "
          f"print(json.dumps([t.symbols, text.text_to_ids({SENTENCE!r}, t).tolist()]))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  symbols, ids = json.loads(out.stdout.strip().splitlines()[-1])
  table = text.SymbolTable.default()
  assert symbols == table.symbols
  assert ids == text.text_to_ids(SENTENCE, table).tolist()


def test_join_prompt_and_text_drops_the_prompts_final_punctuation_only():
  table = text.SymbolTable.default()
  prompt = table.encode(["h", "ə", ",", text.WORD, "l", "oʊ", ".", "…"])
  words = table.encode(["ɡ", "oʊ", "!"])
  ids, heard = text.join_prompt_and_text(prompt, words, table)
  assert table.decode(ids) == ["h", "ə", ",", text.WORD, "l", "oʊ", text.WORD, "ɡ", "oʊ", "!"]
  assert heard == 7 and ids.dtype == np.int32
