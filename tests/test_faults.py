"""Faults and bad input, through the CLI as a user meets them (a subprocess each): one line on
stderr, no traceback, the documented exit code, earlier outputs intact; a full disk during
training, two runs on one workdir, a resumed run with another config, a damaged checkpoint."""
import contextlib
import glob
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time

import pytest

from valle_jax import config_check, run_guard, variants
from valle_jax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO,
       "JAX_COMPILATION_CACHE_DIR": os.path.join(REPO, ".jax_cache"),
       "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5"}
# A tiny AR on one small bucket: steps take milliseconds once compiled.
TRAIN = ("train", "--config=configs/tiny.py", "--config.train.model=ar",
         "--config.data.frame_buckets=(200,)", "--config.data.phoneme_buckets=(64,)",
         "--config.data.max_tokens=800", "--config.train.log_every=5")


def _cli(*args, cwd=REPO, timeout=120):
  return subprocess.run([sys.executable, "-m", "valle_jax.cli", *args], cwd=cwd, env=ENV,
                        capture_output=True, text=True, timeout=timeout)


def _popen(*args, **kwargs):
  return subprocess.Popen([sys.executable, "-m", "valle_jax.cli", *args], cwd=REPO, env=ENV,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def _error_line(stderr: str) -> str:
  """The command's error line; asserts it is the only trace of the failure."""
  assert "Traceback" not in stderr, stderr[-3000:]
  lines = [l for l in stderr.splitlines() if ": error: " in l]
  assert len(lines) == 1, stderr[-3000:]
  return lines[0]


def _wait_for(predicate, proc, seconds=180):
  deadline = time.time() + seconds
  while time.time() < deadline and proc.poll() is None:
    if predicate():
      return
    time.sleep(0.1)
  out, err = proc.communicate(timeout=30) if proc.poll() is not None else ("", "")
  raise AssertionError(f"timed out or exited {proc.returncode}: {err[-3000:]}")


def _metrics_rows(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.isfile(path):
    return 0
  with open(path, encoding="utf-8") as f:
    return sum(1 for line in f if line.strip())


def _snapshot(path):
  """Every file under `path` with its bytes (what 'intact' compares)."""
  out = {}
  for name in sorted(glob.glob(os.path.join(path, "**"), recursive=True)):
    if os.path.isfile(name):
      with open(name, "rb") as f:
        out[os.path.relpath(name, path)] = f.read()
  return out


# ------------------------------------------------------------------------- bad input table


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  root = tmp_path_factory.mktemp("bad_inputs")
  paths = {"root": str(root)}
  for name, text in (("syntax.py", "def get_config(:\n"),
                     ("wrong_type.py", "def get_config():\n  return 3\n"),
                     ("no_get_config.py", "x = 1\n"),
                     ("raises.py", "def get_config():\n  raise ValueError('boom')\n"),
                     ("keep.txt", "earlier output\n")):
    paths[name.split(".")[0]] = str(root / name)
    with open(root / name, "w", encoding="utf-8") as f:
      f.write(text)
  paths["latin1"] = str(root / "latin1.tsv")
  with open(paths["latin1"], "wb") as f:
    f.write("caf\u00e9\tprompt.wav\n".encode("latin-1"))
  paths["folder"] = str(root / "folder")
  os.makedirs(paths["folder"])
  with open(os.path.join(paths["folder"], "old.wav"), "wb") as f:
    f.write(b"earlier output")
  return paths


# (name, argv with {placeholders} from `files`, what the error line must say)
BAD_INPUTS = [
    ("config missing", ["info", "--config=configs/nope.py"], "config file configs/nope.py not found"),
    ("config a folder", ["info", "--config={folder}"], "is a folder"),
    ("config syntax", ["info", "--config={syntax}"], "line 1: syntax error"),
    ("config wrong type", ["info", "--config={wrong_type}"], "returned a value of type int"),
    ("config no get_config", ["info", "--config={no_get_config}"], "defines no get_config()"),
    ("config raises", ["info", "--config={raises}"], "get_config() failed: ValueError: boom"),
    ("field misspelt", ["info", "--config.model.widht=3"], "did you mean --config.model.width?"),
    ("field not a section", ["info", "--config.model.width.x=3"], "is a value, not a section"),
    ("value of wrong type", ["info", "--config.model.width=abc"], "--config.model.width=abc"),
    ("unknown flag", ["train", "--wokdir=x"], "Unknown command line flag 'wokdir'"),
    ("width 0", ["info", "--config.model.width=0"], "model.width = 0: must be an integer >= 1"),
    ("heads do not divide width", ["info", "--config.model.num_heads=3"],
     "must be a multiple of num_heads"),
    ("layers negative", ["info", "--config.model.num_layers=-1"], "model.num_layers = -1"),
    ("mesh 0", ["info", "--config.mesh.data=0"], "mesh.data = 0: must be an integer >= 1 or -1"),
    ("unknown dtype", ["info", "--config.model.compute_dtype=float8"], "model.compute_dtype"),
    ("variant misspelt", ["info", "--config.variant=alignd"], "(did you mean 'aligned'?)"),
    ("forward frames 0", ["info", "--frames=0"], "--frames=0: must be >= 1"),
    ("steps 0", ["train", "--workdir={root}/w1", "--config.train.steps=0"], "train.steps = 0"),
    ("grad accum 0", ["train", "--workdir={root}/w1", "--config.train.grad_accum_steps=0"],
     "train.grad_accum_steps = 0"),
    ("log_every 0", ["train", "--workdir={root}/w1", "--config.train.log_every=0"],
     "train.log_every = 0"),
    ("checkpoint.every 0", ["train", "--workdir={root}/w1", "--config.checkpoint.every=0"],
     "checkpoint.every = 0"),
    ("negative frame bucket", ["train", "--workdir={root}/w1",
                               "--config.data.frame_buckets=(-5,)"], "data.frame_buckets"),
    ("max_tokens 0", ["train", "--workdir={root}/w1", "--config.data.max_tokens=0"],
     "data.max_tokens = 0"),
    ("train.model", ["train", "--workdir={root}/w1", "--config.train.model=tts"], "train.model"),
    ("workdir a file", ["train", "--workdir={keep}", "--config.data.dataset=x"],
     "is a file; pass a folder"),
    ("synthesize batch 0", ["synthesize", "--checkpoint=x", "--text=hi", "--prompt=p.wav",
                            "--batch_size=0"], "--batch_size=0: must be >= 1"),
    ("synthesize out a folder", ["synthesize", "--checkpoint=x", "--text=hi", "--prompt=p.wav",
                                 "--out={folder}"], "is a folder; pass a file name"),
    ("synthesize out under a file", ["synthesize", "--checkpoint=x", "--text=hi",
                                     "--prompt=p.wav", "--out={keep}/a.wav"],
     "lies under the file"),
    ("tsv a folder", ["synthesize", "--checkpoint=x", "--tsv={folder}"], "is a folder"),
    ("tsv not UTF-8", ["synthesize", "--checkpoint=x", "--tsv={latin1}"], "is not UTF-8"),
    ("evaluate max_utterances -1", ["evaluate", "--checkpoint=x", "--out_dir={root}/e",
                                    "--max_utterances=-1"], "--max_utterances=-1"),
    ("evaluate out_dir a file", ["evaluate", "--checkpoint=x", "--out_dir={keep}"],
     "is a file; pass a folder"),
    ("make-corpus 0 utterances", ["make-corpus", "--out={root}/c",
                                  "--config.num_utterances=0"], "num_utterances = 0"),
    ("make-corpus out under a file", ["make-corpus", "--out={keep}/c"], "lies under the file"),
    ("demo workdir a file", ["demo", "--workdir={keep}"], "is a file; pass a folder"),
    ("prepare min > max", ["prepare", "--config.min_duration_s=5", "--config.max_duration_s=1"],
     "every clip would be skipped"),
]


@pytest.mark.parametrize("name,argv,expected", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_one_line(files, name, argv, expected):
  before = {k: _snapshot(files[k]) if os.path.isdir(files[k]) else open(files[k], "rb").read()
            for k in ("keep", "folder")}
  result = _cli(*[a.format(**files) for a in argv])
  assert result.returncode == 2, (name, result.stderr[-3000:])
  assert expected in _error_line(result.stderr), result.stderr
  after = {k: _snapshot(files[k]) if os.path.isdir(files[k]) else open(files[k], "rb").read()
           for k in ("keep", "folder")}
  assert after == before     # earlier outputs intact
  assert not os.path.exists(os.path.join(files["root"], "w1", "checkpoints"))


def test_help_lists_the_commands_own_flags():
  for flag in ("--help", "-h"):
    result = _cli("train", flag)
    assert result.returncode == 0, result.stderr
    assert "--workdir" in result.stdout and "--allow_config_change" in result.stdout
    assert "--log_dir" not in result.stdout        # absl's own flags stay in --helpfull
  result = _cli("evaluate", "--help")
  assert "--max_utterances" in result.stdout and "--top_k" in result.stdout   # shared ones
  from valle_jax import evaluate_cli  # pylint: disable=g-import-not-at-top
  for name in evaluate_cli.SHARED_FLAGS:      # each one a flag that exists
    assert f"  --{name}: " in result.stdout, name


def test_default_config_from_another_folder(tmp_path):
  result = _cli("info", "--frames=8", "--phonemes=4", "--config.model.num_layers=1",
                cwd=str(tmp_path))
  assert result.returncode == 0, result.stderr[-3000:]
  assert "(1 layers, 2 heads, width 32" in result.stdout


def test_config_sections_report_every_problem():
  from configs import tiny  # pylint: disable=g-import-not-at-top
  cfg = tiny.get_config()
  assert config_check.experiment(cfg) == []
  cfg.model.width, cfg.model.num_heads, cfg.train.eval_every = 30, 4, 0
  cfg.optim.peak_lr, cfg.checkpoint.keep = -1.0, 0
  problems = config_check.experiment(cfg)
  assert problems == [
      "model.width = 30 with model.num_heads = 4: the width must be a multiple of num_heads",
      "optim.peak_lr = -1.0: must be a number > 0.0",
      "checkpoint.keep = 0: must be an integer >= 1"]     # eval_every 0 (off) is allowed
  with pytest.raises(UserError, match=r"invalid config \(3 problems\)"):
    config_check.check(problems, "config")
  variants.load_all()
  cfg = tiny.get_config()
  cfg.variant, cfg.data.nar_prompt, cfg.model.mlp_activation = "valle3", "other", "silu"
  cfg.model.ar_bos, cfg.model.nar_tie_offset, cfg.model.nar_tie_output = None, 1, False
  assert config_check.experiment(cfg) == [
      "variant = 'valle3': must be one of 'aligned', 'valle' (did you mean 'valle'?); a "
      "variant's recipe registers when valle_jax.variants.<name> is imported, as `valle-jax` "
      "does",
      "model.mlp_activation = 'silu': must be one of 'gelu', 'relu'",
      "model.ar_bos = None: must be True or False",
      "model.nar_tie_offset = 1: 1 needs model.nar_tie_output = True",
      "data.nar_prompt = 'other': must be one of 'prefix', 'segment', 'other_utterance'"]


def test_attention_and_remat_config_is_checked():
  from configs import tiny  # pylint: disable=g-import-not-at-top
  cfg = tiny.get_config()
  cfg.model.attention, cfg.model.remat = "flash", "some"
  assert config_check.model(cfg) == [
      "model.attention = 'flash': must be one of 'xla', 'cudnn', 'splash'",
      "model.remat = 'some': must be one of 'none', 'full', 'dots_saveable'"]
  cfg.model.remat = "dots_saveable"
  cfg.model.attention = "cudnn"
  assert config_check.model(cfg) == [
      "model.attention = 'cudnn': cuDNN attention takes bfloat16 inputs only; set "
      "model.compute_dtype = 'bfloat16' or model.attention = 'xla'"]
  cfg.model.compute_dtype = "bfloat16"
  assert config_check.model(cfg) == []
  saved = json.loads(tiny.get_config().to_json())   # a resumed run may switch kernel and remat
  run_guard.check_resume_config(saved, cfg, ("model.compute_dtype",), "w", 5,
                                log=lambda *a, **k: None)


def test_every_shipped_config_passes_its_checks():
  from configs import demo, lifeiteng, paper, tiny, valle2  # pylint: disable=g-import-not-at-top
  from configs.corpus import synthetic  # pylint: disable=g-import-not-at-top
  from configs.data import folder, libriheavy, librilight, librispeech, libritts  # pylint: disable=g-import-not-at-top
  from valle_jax.variants.aligned import config as aligned  # pylint: disable=g-import-not-at-top
  for module in (tiny, paper, valle2, lifeiteng, aligned):
    assert config_check.experiment(module.get_config()) == [], module.__name__
  for demo_config in (demo.get_config, aligned.demo_config):
    for quick in (False, True):
      cfg = demo_config(quick)
      assert config_check.experiment(cfg.train.copy_and_resolve_references()) == []
      assert config_check.corpus(cfg.corpus) == []
  for module in (folder, librilight, librispeech, libritts, libriheavy):
    assert config_check.prepare(module.get_config()) == [], module.__name__
  assert config_check.corpus(synthetic.get_config()) == []


# ------------------------------------------------------------------------- training faults


@pytest.fixture(scope="module")
def run_dir(tiny_dataset, tmp_path_factory):
  """A workdir after a 10-step run (checkpoints at 5 and 10)."""
  workdir = str(tmp_path_factory.mktemp("run"))
  result = _cli(*TRAIN, f"--config.data.dataset={tiny_dataset}", f"--workdir={workdir}",
                "--config.train.steps=10", "--config.checkpoint.every=5", timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "done at step 10" in result.stderr
  return workdir


def test_lock_and_signal_exit_code(run_dir, tiny_dataset, tmp_path):
  """A second run on a busy workdir is refused; SIGTERM saves and exits 75 with the step."""
  workdir = str(tmp_path / "run")
  shutil.copytree(run_dir, workdir)
  first = _popen(*TRAIN, f"--config.data.dataset={tiny_dataset}", f"--workdir={workdir}",
                 "--config.train.steps=100000", "--config.checkpoint.every=100000",
                 "--config.train.log_every=1")
  rows = _metrics_rows(workdir)
  _wait_for(lambda: _metrics_rows(workdir) >= rows + 3, first)
  with open(os.path.join(workdir, run_guard.LOCK_FILE), encoding="utf-8") as f:
    assert json.load(f)["pid"] == first.pid
  second = _cli(*TRAIN, f"--config.data.dataset={tiny_dataset}", f"--workdir={workdir}",
                "--config.train.steps=100000")
  assert second.returncode == 2
  assert f"another training run (pid {first.pid}" in _error_line(second.stderr)
  first.send_signal(signal.SIGTERM)
  out, err = first.communicate(timeout=120)
  assert first.returncode == 75, err[-3000:]
  assert "Traceback" not in err
  step = max(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
  assert f"stopped at step {step} of 100000 (SIGTERM): requeue to resume" in err
  assert not os.path.exists(os.path.join(workdir, run_guard.LOCK_FILE))


def test_resume_with_another_config(run_dir, tiny_dataset, tmp_path):
  """Changed width: refused, field named; changed lr: refused unless allowed; another batch
  layout: refused; a stale lock (its process gone) is taken over; more steps are always
  allowed."""
  workdir = str(tmp_path / "run")
  shutil.copytree(run_dir, workdir)
  before = _snapshot(os.path.join(workdir, "checkpoints"))
  common = (*TRAIN, f"--config.data.dataset={tiny_dataset}", f"--workdir={workdir}",
            "--config.checkpoint.every=5")
  wider = _cli(*common, "--config.train.steps=15", "--config.model.width=64")
  assert wider.returncode == 2
  assert "model.width 32 -> 64" in _error_line(wider.stderr)
  faster = _cli(*common, "--config.train.steps=15", "--config.optim.peak_lr=0.001")
  assert faster.returncode == 2
  assert "--allow_config_change=optim.peak_lr" in _error_line(faster.stderr)
  # Another batch layout (here by accumulation; a mesh of another data x fsdp size likewise)
  # would change which examples each later step reads: refused even when allowed.
  regrouped = _cli(*common, "--config.train.steps=15", "--config.train.grad_accum_steps=2",
                   "--allow_config_change=train.grad_accum_steps")
  assert regrouped.returncode == 2
  assert "grad_accum_steps = 1; this mesh gives 2" in _error_line(regrouped.stderr)
  assert _snapshot(os.path.join(workdir, "checkpoints")) == before   # refusals write nothing
  gone = subprocess.Popen([sys.executable, "-c", "pass"])
  gone.wait()
  with open(os.path.join(workdir, run_guard.LOCK_FILE), "w", encoding="utf-8") as f:
    json.dump({"host": os.uname().nodename, "pid": gone.pid, "started": "earlier"}, f)
  allowed = _cli(*common, "--config.train.steps=15", "--config.optim.peak_lr=0.001",
                 "--allow_config_change=optim.peak_lr")
  assert allowed.returncode == 0, allowed.stderr[-3000:]
  assert "taking over the stale lock" in allowed.stdout
  assert "resuming with a changed config: optim.peak_lr 0.003 -> 0.001; train.steps 10 -> 15" \
      in allowed.stdout
  assert "done at step 15" in allowed.stderr


def test_resume_of_a_run_saved_by_an_older_valle_jax():
  """A field added since the save counts as unchanged at its default (refused otherwise); a
  field removed since is ignored, with a line saying so."""
  from configs import tiny  # pylint: disable=g-import-not-at-top
  cfg = tiny.get_config()
  saved = json.loads(cfg.to_json())
  del saved["variant"], saved["model"]["mlp_activation"], saved["model"]["ar_bos"]
  saved["model"]["ar_dwell_embeddings"] = 0          # an option deleted since
  lines = []
  run_guard.check_resume_config(saved, cfg, (), "w", 5, log=lambda *a, **k: lines.append(a[0]))
  assert lines == ["[train] ignoring fields of the saved config that valle-jax no longer "
                   "has: model.ar_dwell_embeddings"]
  cfg.model.ar_bos = False                           # not the behaviour the run had
  with pytest.raises(UserError, match="another model: model.ar_bos true -> false"):
    run_guard.check_resume_config(saved, cfg, (), "w", 5, log=lambda *a, **k: None)


def test_damaged_checkpoint_names_the_previous_one(run_dir, tiny_dataset, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(run_dir, workdir)
  for path in glob.glob(os.path.join(workdir, "checkpoints", "10", "params", "**", "d", "*"),
                        recursive=True):
    os.truncate(path, 10)
  before = _snapshot(workdir)
  result = _cli(*TRAIN, f"--config.data.dataset={tiny_dataset}", f"--workdir={workdir}",
                "--config.train.steps=20", "--config.checkpoint.every=5")
  assert result.returncode == 2
  line = _error_line(result.stderr)
  assert "checkpoint step 10" in line and "cannot be read" in line
  assert "step 5 reads" in line
  assert _snapshot(workdir) == before       # nothing deleted or rewritten


def test_damaged_dataset_shard(tiny_dataset, tmp_path):
  dataset = str(tmp_path / "dataset")
  shutil.copytree(tiny_dataset, dataset)
  (shard,) = glob.glob(os.path.join(dataset, "*train.array_record*"))
  os.truncate(shard, 1000)
  for command in ((*TRAIN, f"--config.data.dataset={dataset}", f"--workdir={tmp_path}/w"),
                  ("align", f"--dataset={dataset}")):
    result = _cli(*command)
    assert result.returncode == 2
    assert "cannot be read" in _error_line(result.stderr)
  os.remove(shard)
  result = _cli("align", f"--dataset={dataset}")
  assert "is missing" in _error_line(result.stderr)


@contextlib.contextmanager
def _small_filesystem(path, megabytes):
  """A tmpfs of `megabytes` at `path`, or None where mounting is not permitted."""
  os.makedirs(path)
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", path],
                           capture_output=True).returncode == 0
  try:
    yield mounted
  finally:
    if mounted:
      subprocess.run(["umount", "-l", path], check=False)


@pytest.mark.parametrize("how", ["tmpfs", "rlimit"])
def test_full_disk_stops_training_cleanly(tiny_dataset, tmp_path, how):
  """The disk fills during training: the run ends within seconds, exit 74, one line naming
  what failed and the last complete checkpoint, which stays readable. `tmpfs`: a small
  mounted filesystem filled with a file; `rlimit`: RLIMIT_FSIZE lowered on the running
  process (writes past it fail with EFBIG, like a full disk), needing no mount."""
  with _small_filesystem(str(tmp_path / "disk"), 16) as mounted:
    if how == "tmpfs" and not mounted:
      pytest.skip("mounting a tmpfs is not permitted here (the rlimit case covers it)")
    workdir = str(tmp_path / "disk" / "run")
    proc = _popen(*TRAIN, f"--config.data.dataset={tiny_dataset}", f"--workdir={workdir}",
                  "--config.train.steps=100000", "--config.checkpoint.every=5")
    first = os.path.join(workdir, "checkpoints", "5")
    _wait_for(lambda: os.path.isdir(first), proc)
    if how == "tmpfs":
      with open(os.path.join(str(tmp_path / "disk"), "filler"), "wb", buffering=0) as f:
        with contextlib.suppress(OSError):
          while True:
            f.write(b"\0" * 65536)
    else:
      resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (1024, 1024))
    filled = time.time()
    out, err = proc.communicate(timeout=60)
    assert time.time() - filled < 30, "the run did not stop within 30 s of the disk filling"
    assert proc.returncode == 74, err[-3000:]
    line = _error_line(err)
    assert "failed" in line and ("No space left on device" in line or "File too large" in line)
    assert "the last complete checkpoint is step" in line
    last = int(line.split("the last complete checkpoint is step ")[1].split()[0])
    assert os.path.isdir(os.path.join(workdir, "checkpoints", str(last)))
    from valle_jax import checkpoint  # pylint: disable=g-import-not-at-top
    reader = checkpoint.RunCheckpoints(os.path.join(workdir, "checkpoints"), every=1, keep=1,
                                     read_only=True)
    assert reader.saved_config(last)["train"]["steps"] == 100000   # complete and readable


def test_second_signal_exits_at_once():
  """The first SIGTERM asks the loop to save and stop; a second one ends the process now."""
  code = ("import os, signal, time\n"
          "from valle_jax import train\n"
          "stop = train._StopSignal()\n"
          "os.kill(os.getpid(), signal.SIGTERM)\n"
          "assert stop.received == 'SIGTERM'\n"
          "os.kill(os.getpid(), signal.SIGTERM)\n"
          "time.sleep(60)\n")
  start = time.time()
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 128 + signal.SIGTERM, result.stderr[-3000:]
  assert "second signal (SIGTERM): exiting now" in result.stderr
  assert time.time() - start < 50


# ------------------------------------------------------------------------- data prep


def test_prepare_that_keeps_nothing_is_one_line(tiny_dataset, tmp_path):
  """Every clip shorter than min_duration_s: one line with why, and the dataset already in
  the output (overwrite=True) stays as it was."""
  from conftest import write_tone_corpus  # pylint: disable=g-import-not-at-top
  corpus = write_tone_corpus(str(tmp_path / "corpus"))
  output = tmp_path / "out"
  shutil.copytree(tiny_dataset, output / "valle_folder" / "1.0.0")
  before = _snapshot(str(output))
  result = _cli("prepare", f"--config.source={corpus}", f"--config.output={output}",
                "--config.codec.weights=random", "--config.overwrite=True",
                "--config.min_duration_s=10")
  assert result.returncode == 2, result.stderr[-3000:]
  line = _error_line(result.stderr)
  assert "every item of a split was skipped" in line and "10 to 30 s" in line
  assert _snapshot(str(output)) == before


def test_prepare_offline_codec_from_the_command_line(tmp_path):
  from conftest import write_tone_corpus  # pylint: disable=g-import-not-at-top
  corpus = write_tone_corpus(str(tmp_path / "corpus"), texts=("one two",))
  result = _cli("prepare", f"--config.source={corpus}", f"--config.output={tmp_path}/out",
                "--config.codec.name=offline", f"--config.codec.path={tmp_path}/no_codec")
  assert result.returncode == 2
  assert "no offline codec at" in _error_line(result.stderr)


def test_folder_scan_reports_what_it_leaves_out(tmp_path):
  from conftest import write_tone_corpus  # pylint: disable=g-import-not-at-top
  from data_prep import corpora  # pylint: disable=g-import-not-at-top
  root = write_tone_corpus(str(tmp_path / "corpus"), texts=("one two", "three four"))
  (tmp_path / "corpus" / "spk0" / "notes.md").write_text("not a clip")
  (tmp_path / "corpus" / "spk1" / "gone.txt").write_text("its audio was deleted")
  listing = corpora.list_folder(root)
  assert [i.id for i in listing.items] == ["spk0/utt0", "spk1/utt1"]
  assert [(s.id, s.reason) for s in listing.skips] == [
      ("spk0/notes.md", "unexpected_extension"), ("spk1/gone", "missing_audio")]


def test_config_check_choices_are_the_librarys():
  """config_check keeps its own copies of the library's choice lists (it must not import jax
  to check a config): they may not drift from the ones the models and loader accept."""
  from valle_jax import config_check, data  # pylint: disable=g-import-not-at-top
  from valle_jax.models import layers  # pylint: disable=g-import-not-at-top
  assert config_check.ATTENTION == layers.ATTENTION
  assert config_check.REMAT == tuple(layers.REMAT)
  assert config_check.MLP_ACTIVATIONS == tuple(layers.ACTIVATIONS)
  assert config_check.NAR_PROMPTS == data.NAR_PROMPTS
