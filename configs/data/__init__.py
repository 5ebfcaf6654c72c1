"""Data prep configs (`valle-jax prepare --config=configs/data/x.py`); `base()` holds the
fields every corpus shares."""
import ml_collections


def base(corpus: str) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.corpus = corpus            # folder | libritts | librispeech | librilight | libriheavy
  c.source = ""                # corpus root directory
  c.output = ""                # TFDS data dir; the dataset goes to <output>/valle_<corpus>/1.0.0
  c.overwrite = False          # replace an existing dataset of the same builder and version
  c.lang = "en-us"             # espeak-ng language of the transcripts
  c.symbols = ""               # an existing symbols.json to reuse ("" = the default table)
  c.extra_symbols = []         # symbols appended to the table (ids of the others never move)
  c.min_duration_s = 0.5       # clips outside [min, max] are skipped ("too_short" / "too_long")
  c.max_duration_s = 30.0
  c.batch_size = 16            # clips per codec call (Beam may batch fewer)
  c.progress_every_s = 30.0    # seconds between a worker's progress lines

  # Codec: any backend of valle_jax.codec (`name` picks it; the rest is the backend's).
  c.codec = ml_collections.ConfigDict()
  c.codec.name = "encodec"
  c.codec.bandwidth = 6.0      # kbps -> Q = 8
  c.codec.weights = "pretrained"  # or "random" (tests, benchmarks)
  c.codec.checkpoint = ""      # local encodec_24khz-d7cc33bc.th; "" = the package's download
  c.codec.device = "cpu"
  # codec.name = "offline": the folder the offline codec was fitted into
  # (`python -m valle_jax.codec.offline --corpus=DIR --out=CODEC_DIR`); EnCodec's fields unused.
  c.codec.path = ""

  # Beam: local by default; any runner with its options, e.g. DataflowRunner with
  # "--project=P --region=R --temp_location=gs://B/tmp --requirements_file=reqs.txt".
  # FnApiRunner is the in-process runner behind DirectRunner; "DirectRunner" itself first
  # tries Prism, a binary it downloads from GitHub, and falls back to FnApiRunner offline.
  c.beam = ml_collections.ConfigDict()
  c.beam.runner = "FnApiRunner"
  c.beam.options = ""          # extra pipeline flags, e.g. "--direct_num_workers=2"
  return c
