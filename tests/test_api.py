"""The Python API (`valle_jax.load`, `TTS.synthesize`): README's example, run verbatim on a
tiny trained run, gives finite mono speech at the codec's rate; the same seed gives the same
speech, from a path or an array prompt; a run that is not there is one `UserError`."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

import valle_jax
from valle_jax.errors import UserError

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def _readme_example() -> str:
  """The python code block between README's api-example markers."""
  with open(README, encoding="utf-8") as f:
    section = re.search(r"<!-- api-example -->(.*?)<!-- /api-example -->", f.read(), re.S)
  assert section, "README.md has no <!-- api-example --> section"
  (code,) = re.findall(r"```python\n(.*?)```", section.group(1), re.S)
  return code


@pytest.fixture(scope="module")
def prompt(tmp_path_factory):
  """A 1.5 s voice-like tone at 24 kHz: (its path, the waveform)."""
  t = np.arange(36_000) / 24_000
  wav = (0.3 * np.sin(2 * np.pi * (120 + 30 * np.sin(3 * t)) * t)).astype(np.float32)
  path = str(tmp_path_factory.mktemp("api") / "speaker.wav")
  sf.write(path, wav, 24_000)
  return path, wav


@pytest.fixture(scope="module")
def tts(trained_run) -> valle_jax.TTS:
  return valle_jax.load(trained_run)


def _run_example(run_dir: str, prompt_wav) -> tuple[valle_jax.TTS, list[np.ndarray]]:
  """README's example on `run_dir` and `prompt_wav`: its `tts` and `wavs`."""
  code = _readme_example()
  for literal in ('"runs/paper"', '"speaker.wav"'):
    assert code.count(literal) == 1, literal
  code = code.replace('"runs/paper"', "RUN_DIR").replace('"speaker.wav"', "PROMPT_WAV")
  scope = {"RUN_DIR": run_dir, "PROMPT_WAV": prompt_wav}
  exec(code, scope)  # pylint: disable=exec-used
  return scope["tts"], scope["wavs"]


def test_readme_example_runs_and_is_deterministic(trained_run, prompt):
  """Finite float32 mono speech at 24 kHz, whole codec frames within the sampler's limit;
  loaded again, with the prompt as an array, the same seed gives the same speech."""
  path, wav = prompt
  tts, wavs = _run_example(trained_run, path)
  assert tts.sample_rate == tts.codec.sample_rate == 24_000
  assert isinstance(wavs, list) and len(wavs) == 2
  hop = tts.codec.sample_rate // 75
  for out in wavs:
    assert out.dtype == np.float32 and out.ndim == 1 and np.isfinite(out).all()
    # at most 12 frames a phoneme (the sampler's limit) of <= 30 (prompt transcript included)
    assert len(out) % hop == 0 and 0 < len(out) // hop <= 12 * 30
  _, again = _run_example(trained_run, (wav, 24_000))
  for a, b in zip(wavs, again):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("prompt_wav, kw, message", [
    ((np.zeros((2, 3, 4)), 24_000), {}, r"shape \(2, 3, 4\), rate 24000\) is not finite"),
    ((np.full(36_000, np.nan), 24_000), {}, "is not finite samples"),
    ((np.ones(36_000), 0), {}, "at a positive sample rate"),
    ((np.zeros(36_000), 24_000), {}, "the prompt waveform is silent"),
    ((np.ones(12_000), 24_000), {}, "the prompt waveform lasts 0.50 s"),
    ("speaker.wav", {"top_p": 2.0}, r"top_p must be in \(0, 1\]"),
    ("speaker.wav", {"batch_size": 0}, "batch_size must be >= 1"),
])
def test_bad_prompts_and_options_are_one_user_error(tts, prompt, prompt_wav, kw, message):
  prompt_wav = prompt[0] if prompt_wav == "speaker.wav" else prompt_wav
  with pytest.raises(UserError, match=message):
    tts.synthesize("Hello.", prompt_wav, "A tone.", **kw)


def test_a_missing_run_is_one_user_error(tmp_path):
  with pytest.raises(UserError, match="no checkpoint at .*nowhere"):
    valle_jax.load(str(tmp_path / "nowhere"))


def test_importing_the_api_defines_no_flags():
  """`import valle_jax` loads no JAX; the API and the synthesis library define no absl flags
  (those live in the command module, synthesize_cli)."""
  code = ("import sys; import valle_jax; print('jax' in sys.modules); "
          "import valle_jax.api, valle_jax.synthesize; from absl import flags; "
          "print(sorted(n for n in flags.FLAGS "
          "if (flags.FLAGS.find_module_defining_flag(n) or '').startswith('valle_jax')))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert out.stdout.split("\n")[:2] == ["False", "[]"], out.stdout
