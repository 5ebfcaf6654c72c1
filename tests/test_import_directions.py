"""Dependencies point one way: `valle_jax.cli` -> the command modules -> the library, and
data_prep -> valle_jax, never back.

Command modules: the ones `valle_jax.cli.COMMANDS` runs, `valle_jax.cli` and `valle_jax.bench`;
they define absl flags and may import anything. Every other module of valle_jax/ and
data_prep/ is a library module: it imports no command module and defines no flag when
imported; one of valle_jax/ (the variants aside) also imports neither data_prep nor
valle_jax.variants (the variants register themselves with the core, which never names one).
The module sources are read with `ast`, so a test failure names file:line without importing
anything; one subprocess checks the flags by importing every library module.
"""
import ast
import os
import pathlib
import subprocess
import sys

import pytest

from valle_jax import cli

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("valle_jax", "data_prep")
COMMANDS = frozenset({module for module, _ in cli.COMMANDS.values()}
                     | {"valle_jax.cli", "valle_jax.bench"})
VARIANTS = "valle_jax.variants"
# The Python API's `load` does what `valle-jax` does before a command: it imports the
# variants, so that a variant's run loads in a notebook as on the command line.
LOADS_VARIANTS = frozenset({"valle_jax.api"})


def _module_files() -> dict[str, pathlib.Path]:
  """Dotted module name -> source file, for every module of valle_jax/ and data_prep/."""
  files = {}
  for package in PACKAGES:
    for path in sorted((ROOT / package).rglob("*.py")):
      parts = path.relative_to(ROOT).with_suffix("").parts
      files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
  return files


MODULES = _module_files()
LIBRARY = sorted(m for m in MODULES if m not in COMMANDS)


def _within(module: str, package: str) -> bool:
  return module == package or module.startswith(package + ".")


def _imports(module: str) -> list[tuple[int, str]]:
  """(line, imported module) of every import in `module`, at any depth (a lazy import is a
  dependency too). `from a import b` counts as `a.b` when that is a module, else `a`."""
  path = MODULES[module]
  package = module if path.name == "__init__.py" else module.rpartition(".")[0]
  found = []
  for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
    if isinstance(node, ast.Import):
      found += [(node.lineno, alias.name) for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
        base = f"{anchor}.{base}" if base else anchor
      for alias in node.names:
        sub = f"{base}.{alias.name}"
        found.append((node.lineno, sub if sub in MODULES else base))
  return found


def _where(module: str, line: int) -> str:
  return f"{MODULES[module].relative_to(ROOT)}:{line}"


def test_the_command_modules_exist():
  """The commands are read from `cli.COMMANDS`: each one names a module of the repository."""
  assert COMMANDS <= set(MODULES), sorted(COMMANDS - set(MODULES))
  assert {"valle_jax.metrics", "valle_jax.evaluate", "data_prep.corpora"} <= set(LIBRARY)


def test_library_modules_import_no_command_module():
  wrong = [f"{_where(m, line)}: {m} imports the command module {target}"
           for m in LIBRARY for line, target in _imports(m) if target in COMMANDS]
  assert not wrong, "\n".join(wrong)


def test_valle_jax_imports_neither_data_prep_nor_a_variant():
  core = [m for m in LIBRARY if _within(m, "valle_jax") and not _within(m, VARIANTS)]
  wrong = []
  for m in core:
    for line, target in _imports(m):
      if _within(target, "data_prep"):
        wrong.append(f"{_where(m, line)}: {m} imports {target} (data_prep imports valle_jax, "
                     "not the other way)")
      elif _within(target, VARIANTS) and m not in LOADS_VARIANTS:
        wrong.append(f"{_where(m, line)}: {m} imports {target} (the core never imports a "
                     "variant)")
  assert not wrong, "\n".join(wrong)


def _runs_at_import(body: list[ast.stmt]):
  """The nodes of `body` that run when the module is imported: not function bodies or
  lambdas (they run when called), nor an `if __name__ == "__main__":` block."""
  for stmt in body:
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
      # Only the decorators and default values run at import.
      for expr in stmt.decorator_list + stmt.args.defaults + stmt.args.kw_defaults:
        if expr is not None:
          yield from _runs_at_import([ast.Expr(expr)])
      continue
    if (isinstance(stmt, ast.If) and isinstance(stmt.test, ast.Compare)
        and isinstance(stmt.test.left, ast.Name) and stmt.test.left.id == "__name__"):
      yield from _runs_at_import(stmt.orelse)
      continue
    stack = [stmt]
    while stack:
      node = stack.pop()
      yield node
      for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.stmt):
          yield from _runs_at_import([child])
        elif not isinstance(child, ast.Lambda):
          stack.append(child)


def _defines_a_flag(node: ast.AST) -> bool:
  """A call of `flags.DEFINE_*`, `config_flags.DEFINE_*` or an imported `DEFINE_*`."""
  if not isinstance(node, ast.Call):
    return False
  func = node.func
  name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
  return name.startswith("DEFINE")


def test_library_modules_define_no_flags_at_import():
  wrong = []
  for m in LIBRARY:
    tree = ast.parse(MODULES[m].read_text(encoding="utf-8"), str(MODULES[m]))
    wrong += [f"{_where(m, node.lineno)}: {m} defines an absl flag at import (flags belong "
              "to the command modules)" for node in _runs_at_import(tree.body)
              if _defines_a_flag(node)]
  assert not wrong, "\n".join(wrong)


def test_the_rules_catch_what_they_forbid(tmp_path, monkeypatch):
  """Each rule fails on a module that breaks it (so a passing run means something)."""
  bad = tmp_path / "valle_jax" / "bad.py"
  bad.parent.mkdir()
  bad.write_text("from absl import flags\n"
                 "from valle_jax import evaluate_cli\n"
                 "import data_prep.corpora\n"
                 "def f():\n"
                 "  from valle_jax.variants import aligned\n"
                 "  flags.DEFINE_string('ok', None, 'defined when f is called')\n"
                 "if True:\n"
                 "  X = flags.DEFINE_integer('x', 0, 'defined at import')\n"
                 "if __name__ == '__main__':\n"
                 "  flags.DEFINE_bool('main', False, 'only when run as a script')\n",
                 encoding="utf-8")
  monkeypatch.setitem(MODULES, "valle_jax.bad", bad)
  monkeypatch.setitem(globals(), "ROOT", tmp_path)
  monkeypatch.setitem(globals(), "LIBRARY", ["valle_jax.bad"])
  with pytest.raises(AssertionError, match=r"valle_jax/bad.py:2: .* command module "
                     r"valle_jax.evaluate_cli"):
    test_library_modules_import_no_command_module()
  with pytest.raises(AssertionError) as e:
    test_valle_jax_imports_neither_data_prep_nor_a_variant()
  assert ("bad.py:3: valle_jax.bad imports data_prep.corpora" in str(e.value)
          and "bad.py:5: valle_jax.bad imports valle_jax.variants.aligned" in str(e.value))
  with pytest.raises(AssertionError) as e:
    test_library_modules_define_no_flags_at_import()
  assert "bad.py:8:" in str(e.value)
  assert "bad.py:6:" not in str(e.value) and "bad.py:10:" not in str(e.value)


def test_importing_every_library_module_defines_no_flag():
  """Imports every library module in a fresh process: the flags defined meanwhile are the
  libraries' own (absl's, grain's, orbax's...), none of valle_jax or data_prep."""
  code = ("import importlib, sys; from absl import flags; "
          "before = set(flags.FLAGS); "
          "[importlib.import_module(m) for m in sys.argv[1:]]; "
          "owner = {n: flags.FLAGS.find_module_defining_flag(n) or '?' "
          "         for n in set(flags.FLAGS) - before}; "
          "print(sorted(f'--{n} ({m})' for n, m in owner.items() "
          "             if m == '?' or m.split('.')[0] in ('valle_jax', 'data_prep')))")
  out = subprocess.run([sys.executable, "-c", code, *LIBRARY], capture_output=True,
                       text=True, cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.strip() == "[]", f"flags defined by importing library modules: {out.stdout}"
