"""The `valle-jax` entry point: commands, config overrides, one-line user errors."""
import os
import subprocess
import sys

import pytest

from valle_jax import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
  return subprocess.run([sys.executable, "-m", "valle_jax.cli", *args], capture_output=True,
                        text=True, timeout=300, cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_usage_lists_commands(capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["valle-jax", "--help"])
  assert exit_info.value.code == 0
  assert "info" in capsys.readouterr().out


def test_unknown_command_is_one_clear_line():
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["valle-jax", "trian"])
  assert "unknown command 'trian'" in str(exit_info.value.code)


def test_info_with_config_override():
  result = _run("info", "--config=configs/tiny.py", "--config.model.num_layers=1",
                "--frames=30", "--phonemes=8")
  assert result.returncode == 0, result.stderr
  assert "(1 layers, 2 heads, width 32" in result.stdout
  assert "AR:" in result.stdout and "NAR:" in result.stdout


def test_user_error_has_no_traceback():
  result = _run("info", "--config=configs/tiny.py", "--config.mesh.data=3")
  assert result.returncode == 2
  assert "Traceback" not in result.stderr
  assert "valle-jax info: error: Mesh" in result.stderr


def test_the_train_library_defines_no_flags():
  """A notebook importing valle_jax.train gets no absl flags (the command's live in
  valle_jax.train_cli), so the demo, which trains in-process, owns its --workdir."""
  code = ("from absl import flags; import valle_jax.train, valle_jax.demo; "
          "print(sorted(flags.FLAGS.flags_by_module_dict().get('valle_jax.train', [])), "
          "flags.FLAGS.find_module_defining_flag('workdir'))")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.split() == ["[]", "valle_jax.demo"]
