"""Config files and config values, checked before a command does any work.

- `command_line(args, default)`: the `--config=FILE` of a command line (or the command's
  default), found from any folder (the working directory first, then next to the installed
  `configs` package), loaded once here so that a missing file, a folder, a syntax error, a
  `get_config()` of the wrong type or a misspelt `--config.a.b` override is one line.
- One function per config section (`model`, `mesh`, `optim`, `data`, `train`,
  `checkpoint`, `distributed`; `prepare` and `corpus` for the data prep and corpus configs),
  each returning its problems, one line per field: the field, its value and what is allowed.
  `experiment` also checks `variant` against the recipes registered so far
  (valle_jax/recipe.py; `valle-jax` imports every variant before it runs a command).
  `check(problems, what)` raises them together as one `UserError`.
"""
from __future__ import annotations

import difflib
import importlib.util
import math
import numbers
import os
import re
from typing import Any, Callable, Sequence

import ml_collections

from valle_jax.errors import UserError

COMPUTE_DTYPES = ("float32", "bfloat16")
ATTENTION = ("xla", "cudnn", "splash")      # models/layers.py ATTENTION
REMAT = ("none", "full", "dots_saveable")   # models/layers.py REMAT
TRAIN_MODELS = ("ar", "nar", "both")
NAR_STAGE_CONDITIONING = ("adaln", "token")
MLP_ACTIVATIONS = ("gelu", "relu")          # models/layers.py ACTIVATIONS
NAR_PROMPTS = ("prefix", "segment", "other_utterance")   # data.py NAR_PROMPTS


# ------------------------------------------------------------------------- config files


def config_root() -> str:
  """The folder holding the `configs` package (the repository, or site-packages)."""
  import configs  # pylint: disable=g-import-not-at-top
  return os.path.dirname(os.path.dirname(os.path.abspath(configs.__file__)))


def resolve_config_path(path: str) -> str:
  """`path` as given (relative to the working directory), else relative to `config_root()`;
  a `UserError` when neither is a file."""
  given = os.path.expanduser(path)
  candidates = [given] if os.path.isabs(given) else [given, os.path.join(config_root(), given)]
  for candidate in candidates:
    if os.path.isfile(candidate):
      return os.path.abspath(candidate)
  if os.path.isdir(candidates[0]):
    raise UserError(f"--config={path} is a folder; pass a config file in it, e.g. "
                    f"--config={os.path.join(path, 'tiny.py')}.")
  raise UserError(f"config file {path} not found (looked in {os.getcwd()} and "
                  f"{config_root()}).")


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """Runs the config file's `get_config()`; any failure is one line."""
  name = "_valle_jax_config_" + re.sub(r"\W", "_", os.path.abspath(path))
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except SyntaxError as e:
    raise UserError(f"{path} line {e.lineno}: syntax error: {e.msg}.") from None
  except Exception as e:  # pylint: disable=broad-except  (any failure of a user's file)
    raise UserError(f"{path} failed to load: {_one_line(e)}") from None
  if not callable(getattr(module, "get_config", None)):
    raise UserError(f"{path} defines no get_config(); a config file returns its "
                    "ml_collections.ConfigDict from get_config().")
  try:
    config = module.get_config()
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f"{path}: get_config() failed: {_one_line(e)}") from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise UserError(f"{path}: get_config() returned a value of type {type(config).__name__}; it must "
                    "return an ml_collections.ConfigDict.")
  return config


def _one_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


_OVERRIDE = re.compile(r"^--?(?:no)?config\.([^=]+)(?:=.*)?$")
_CONFIG_ARG = re.compile(r"^--?config(?:=(.*))?$")


def command_line(args: Sequence[str], default: str) -> list[str]:
  """`args` (a command's flags) with `--config` resolved to an absolute file, put first,
  after checking that the file loads and that every `--config.a.b` override names a field.
  """
  args, path = list(args), default
  rest = []
  i = 0
  while i < len(args):
    match = _CONFIG_ARG.match(args[i])
    if match:
      if match.group(1) is None:     # `--config FILE`
        if i + 1 >= len(args):
          raise UserError("--config needs a file: --config=configs/tiny.py.")
        path, i = args[i + 1], i + 2
        continue
      path = match.group(1)
    else:
      rest.append(args[i])
    i += 1
  resolved = resolve_config_path(path)
  config = load_config_file(resolved)
  problems = [problem for arg in rest if (m := _OVERRIDE.match(arg))
              for problem in [_override_problem(config, m.group(1))] if problem]
  check(problems, "command line")
  return [f"--config={resolved}"] + rest


def _override_problem(config: ml_collections.ConfigDict, field: str) -> str | None:
  node, done, keys = config, [], field.split(".")
  for i, key in enumerate(keys):
    if not isinstance(node, (ml_collections.ConfigDict, dict)):
      return f"--config.{field}: config.{'.'.join(done)} is a value, not a section."
    if key not in node:
      close = difflib.get_close_matches(key, list(node.keys()), n=1)
      where = f"config.{'.'.join(done)}" if done else "the config"
      hint = f"; did you mean --config.{'.'.join(done + close + keys[i + 1:])}?" if close else (
          f"; {where} has {', '.join(sorted(node.keys()))}.")
      return f"--config.{field}: {where} has no field {key!r}{hint}"
    node, done = node[key], done + [key]
  return None


# ------------------------------------------------------------------------- value checks


def check(problems: Sequence[str], what: str) -> None:
  """Raises one `UserError` listing `problems` (one per line), if any."""
  if len(problems) == 1:
    raise UserError(f"invalid {what}: {problems[0]}")
  if problems:
    raise UserError(f"invalid {what} ({len(problems)} problems):"
                    + "".join(f"\n  {p}" for p in problems))


def _is_int(v) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v) -> bool:
  return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


class _Section:
  """Collects the problems of one config section: `field = value: what is allowed`."""

  def __init__(self, cfg, prefix: str):
    self.cfg, self.prefix, self.problems = cfg, prefix, []

  def value(self, name: str) -> Any:
    return self.cfg.get(name)

  def bad(self, name: str, allowed: str) -> None:
    self.problems.append(f"{self.prefix}{name} = {self.value(name)!r}: {allowed}")

  def has(self, name: str) -> bool:
    return name in self.cfg

  def integer(self, name: str, low: int | None = None, *, also: Sequence[int] = ()) -> bool:
    v = self.value(name)
    if not self.has(name):
      return False
    if not _is_int(v) or (v not in also and low is not None and v < low):
      extra = "".join(f" or {a}" for a in also)
      self.bad(name, f"must be an integer >= {low}{extra}" if low is not None
               else "must be an integer")
      return False
    return True

  def number(self, name: str, low: float | None = None, high: float | None = None, *,
             low_open: bool = False, high_open: bool = False) -> bool:
    v = self.value(name)
    if not self.has(name):
      return False
    ok = _is_number(v)
    ok = ok and (low is None or (v > low if low_open else v >= low))
    ok = ok and (high is None or (v < high if high_open else v <= high))
    if not ok:
      if low is not None and high is not None:
        allowed = (f"must be a number in {'(' if low_open else '['}{low}, {high}"
                   f"{')' if high_open else ']'}")
      elif low is not None:
        allowed = f"must be a number {'>' if low_open else '>='} {low}"
      else:
        allowed = "must be a finite number"
      self.bad(name, allowed)
    return ok

  def choice(self, name: str, choices: Sequence[str]) -> None:
    if self.has(name) and self.value(name) not in choices:
      self.bad(name, f"must be one of {', '.join(repr(c) for c in choices)}")

  def boolean(self, name: str) -> None:
    if self.has(name) and not isinstance(self.value(name), bool):
      self.bad(name, "must be True or False")

  def buckets(self, name: str) -> None:
    v = self.value(name)
    if not self.has(name):
      return
    if (not isinstance(v, (tuple, list)) or not v
        or not all(_is_int(b) and b >= 1 for b in v) or len(set(v)) != len(v)):
      self.bad(name, "must be a non-empty list of distinct integers >= 1")


def model(cfg) -> list[str]:
  s = _Section(cfg.model, "model.")
  for name in ("num_layers", "width", "mlp_dim", "phoneme_vocab_size", "codebook_size",
               "ar_group_size"):
    s.integer(name, 1)
  heads = s.integer("num_heads", 1)
  if heads and _is_int(s.value("width")) and s.value("width") >= 1 and (
      s.value("width") % s.value("num_heads")):
    s.problems.append(f"model.width = {s.value('width')} with model.num_heads = "
                      f"{s.value('num_heads')}: the width must be a multiple of num_heads")
  s.integer("num_codebooks", 1)
  s.number("dropout", 0.0, 1.0, high_open=True)
  s.choice("compute_dtype", COMPUTE_DTYPES)
  s.choice("attention", ATTENTION)
  s.choice("remat", REMAT)
  if s.value("attention") == "cudnn" and s.value("compute_dtype") != "bfloat16":
    s.bad("attention", "cuDNN attention takes bfloat16 inputs only; set "
          "model.compute_dtype = 'bfloat16' or model.attention = 'xla'")
  s.choice("mlp_activation", MLP_ACTIVATIONS)
  for name in ("ar_position_scale", "ar_bos", "ar_head_bias"):
    s.boolean(name)
  s.choice("nar_stage_conditioning", NAR_STAGE_CONDITIONING)
  s.boolean("nar_tie_output")
  if s.has("nar_tie_offset"):
    offset = s.value("nar_tie_offset")
    if not _is_int(offset) or offset not in (0, 1):
      s.bad("nar_tie_offset", "must be 0 or 1")
    elif offset == 1 and s.value("nar_tie_output") is False:
      s.bad("nar_tie_offset", "1 needs model.nar_tie_output = True")
  return s.problems


def mesh(cfg) -> list[str]:
  s = _Section(cfg.mesh, "mesh.")
  for name in ("data", "fsdp", "tensor"):
    s.integer(name, 1, also=(-1,))
  if [s.value(n) for n in ("data", "fsdp", "tensor")].count(-1) > 1:
    s.problems.append(f"mesh = {dict(cfg.mesh)}: at most one axis may be -1 (all remaining "
                      "devices)")
  return s.problems


def optim(cfg) -> list[str]:
  s = _Section(cfg.optim, "optim.")
  s.number("peak_lr", 0.0, low_open=True)
  s.integer("warmup_steps", 0)
  s.number("b1", 0.0, 1.0, high_open=True)
  s.number("b2", 0.0, 1.0, high_open=True)
  s.number("weight_decay", 0.0)
  s.number("grad_clip_norm", 0.0, low_open=True)
  return s.problems


def data(cfg) -> list[str]:
  s = _Section(cfg.data, "data.")
  s.buckets("frame_buckets")
  s.buckets("phoneme_buckets")
  s.integer("max_tokens", 1)      # an example longer than the budget is a batch alone
  s.integer("max_batch_size", 1)
  s.number("prompt_seconds", 0.0, low_open=True)
  s.choice("nar_prompt", NAR_PROMPTS)
  s.number("same_speaker_pairs", 0.0, 1.0)
  weights = s.value("nar_stage_weights")
  if s.has("nar_stage_weights") and (
      not isinstance(weights, (tuple, list))
      or not all(_is_number(w) and w >= 0 for w in weights)
      or (weights and not sum(weights) > 0)):
    s.bad("nar_stage_weights", "must be () or non-negative numbers, not all 0")
  s.integer("num_threads", 0)
  s.integer("prefetch", 0)
  s.integer("device_prefetch", 0)
  s.integer("workers", 0)
  if s.has("train_split") and not s.value("train_split"):
    s.bad("train_split", "must name a split of the dataset")
  return s.problems


def train(cfg) -> list[str]:
  s = _Section(cfg.train, "train.")
  s.integer("steps", 1)
  s.choice("model", TRAIN_MODELS)
  s.integer("grad_accum_steps", 1)
  s.integer("log_every", 1)
  s.integer("eval_every", 0)       # 0: no periodic evaluation
  s.integer("eval_batches", 1)
  s.integer("nan_max_consecutive", 1)
  return s.problems


def checkpoint(cfg) -> list[str]:
  s = _Section(cfg.checkpoint, "checkpoint.")
  s.integer("every", 1)
  s.integer("keep", 1)
  s.boolean("async_save")
  return s.problems


def distributed(cfg) -> list[str]:
  s = _Section(cfg.distributed, "distributed.")
  if s.integer("num_processes", 1) and s.integer("process_id", 0) and (
      s.value("process_id") >= s.value("num_processes")):
    s.bad("process_id", f"must be below distributed.num_processes "
          f"({s.value('num_processes')})")
  return s.problems


SECTIONS: dict[str, Callable[[Any], list[str]]] = {
    "model": model, "mesh": mesh, "optim": optim, "data": data, "train": train,
    "checkpoint": checkpoint, "distributed": distributed}


def variant(cfg) -> list[str]:
  """`variant` names a registered recipe (valle_jax/recipe.py)."""
  from valle_jax import recipe  # pylint: disable=g-import-not-at-top  (models: import on use)
  name = cfg.get("variant", recipe.VALLE.name)
  known = recipe.names()
  if name in known:
    return []
  close = difflib.get_close_matches(str(name), known, n=1)
  hint = f" (did you mean {close[0]!r}?)" if close else ""
  return [f"variant = {name!r}: must be one of {', '.join(map(repr, known))}{hint}; a "
          "variant's recipe registers when valle_jax.variants.<name> is imported, as "
          "`valle-jax` does"]


def experiment(cfg, sections: Sequence[str] = tuple(SECTIONS)) -> list[str]:
  """The problems of an experiment config (configs/base.py), over `sections` it has, and
  of its `variant`."""
  problems = []
  if "seed" in cfg and not _is_int(cfg.seed):
    problems.append(f"seed = {cfg.seed!r}: must be an integer")
  problems += variant(cfg)
  for name in sections:
    if name in cfg:
      problems += SECTIONS[name](cfg)
  return problems


def prepare(cfg) -> list[str]:
  """The problems of a data prep config (configs/data/)."""
  s = _Section(cfg, "")
  low_ok = s.number("min_duration_s", 0.0)
  high_ok = s.number("max_duration_s", 0.0, low_open=True)
  if low_ok and high_ok and cfg.min_duration_s > cfg.max_duration_s:
    s.problems.append(f"min_duration_s = {cfg.min_duration_s!r} > max_duration_s = "
                      f"{cfg.max_duration_s!r}: every clip would be skipped")
  s.integer("batch_size", 1)
  s.number("progress_every_s", 0.0, low_open=True)
  return s.problems


def corpus(cfg) -> list[str]:
  """The problems of a synthetic corpus config (configs/corpus/synthetic.py)."""
  s = _Section(cfg, "")
  s.integer("num_utterances", 1)
  s.integer("num_heldout_utterances", 0)
  s.integer("sample_rate", 8000)
  low_ok, high_ok = s.integer("min_words", 1), s.integer("max_words", 1)
  if low_ok and high_ok and cfg.min_words > cfg.max_words:
    s.bad("min_words", f"must be <= max_words ({cfg.max_words})")
  s.integer("workers", 0)
  s.integer("chunk_size", 1)
  if s.has("voices") and not list(s.value("voices")):
    s.bad("voices", "must name at least one voice")
  return s.problems


def flag_problems(rows: Sequence[tuple[str, Any, bool, str]]) -> list[str]:
  """Problems of command-line flags: rows (name, value, whether it is allowed, what is)."""
  return [f"--{name}={value}: {allowed}" for name, value, ok, allowed in rows if not ok]
