"""Defaults shared by every experiment config; each config file starts from `base()`.

Override any field on the command line: `--config.model.num_layers=2`.
"""
import ml_collections


def base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  # Both the AR and the NAR transformer use these sizes (the paper uses one size for both).
  c.model = ml_collections.ConfigDict()
  c.model.num_layers = 12
  c.model.num_heads = 16
  c.model.width = 1024            # model (embedding) dimension
  c.model.mlp_dim = 4096          # feed-forward hidden dimension
  c.model.dropout = 0.1
  c.model.phoneme_vocab_size = 512  # set from the dataset's symbols.json when training
  c.model.num_codebooks = 8         # Q
  c.model.codebook_size = 1024      # entries per codebook
  c.model.compute_dtype = "float32"  # "float32" | "bfloat16"; params are always float32
  c.model.ar_group_size = 1          # VALL-E 2 grouped code modeling: frames per AR step
  # Phoneme pointer (beyond the paper; like VALL-E R's monotonic alignment): each AR audio
  # input also embeds the phoneme its frame is spoken in, and a second head predicts when the
  # next frame moves on to the next phoneme. Trained on the dataset's forced alignments
  # (`valle-jax align`); the sampler moves the pointer itself. Needs ar_group_size = 1.
  c.model.ar_phoneme_pointer = False
  # With the pointer: N > 0 adds to each audio slot an embedding of how many frames its
  # phoneme has had before (0 .. N-1, clipped), so the AR knows where in a phoneme it is
  # without reading it off its own frames. 0: off (the paper has no pointer).
  c.model.ar_dwell_embeddings = 0
  # Text dropout (beyond the paper; classifier-free guidance): the share of AR training
  # examples whose every phoneme is replaced by <pad> (their count kept), so the same AR also
  # learns to continue audio without the text, which the sampler guides against
  # (SampleOptions.text_guidance).
  c.model.ar_text_dropout = 0.0
  # Training only: each AR input token's embedding (BOS's excepted) is zeroed with this
  # probability; its position and, with the pointer, its phoneme stay (Tacotron's pre-net
  # dropout). The previous frames then predict less and the text more, so that free-running
  # synthesis, which feeds back its own frames, follows the text (README "The demo").
  c.model.ar_audio_token_dropout = 0.0
  # Training only (parallel scheduled sampling): a first, gradient-free pass draws the AR's
  # own code for every frame, and each of the target's input frames is replaced by it with
  # this probability, so the AR learns to read back frames like those it will generate.
  # Costs one more forward pass per step.
  c.model.ar_scheduled_sampling = 0.0
  c.model.nar_stage_conditioning = "adaln"  # "adaln" (VALL-E) | "token" (VALL-E 2)
  # Beyond the paper: the NAR also predicts codebook 1 (stage 0), for every frame at once,
  # given each frame's phoneme (forced alignments in training; the AR's phoneme pointer at
  # inference, which then sets the timing and the NAR the codes). See models/nar.py.
  c.model.nar_codebook1 = False
  c.model.nar_tie_output = True      # prediction layer j tied to acoustic embedding j+1
  # "random" (the paper) | "codec": acoustic embeddings start from the dataset codec's
  # codebook vectors, projected to `width` (models/layers.py codebook_embeddings).
  c.model.acoustic_embedding_init = "random"

  # Device mesh: sizes of the (data, fsdp, tensor) axes; -1 means "all remaining devices".
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1
  c.mesh.fsdp = 1
  c.mesh.tensor = 1

  # Optimiser: AdamW, linear warmup to `peak_lr`, then linear decay to 0 at train.steps.
  c.optim = ml_collections.ConfigDict()
  c.optim.peak_lr = 5e-4
  c.optim.warmup_steps = 32_000
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.weight_decay = 0.01
  c.optim.grad_clip_norm = 1.0    # each model clipped by its own global gradient norm

  # Input pipeline (valle_jax/data.py).
  c.data = ml_collections.ConfigDict()
  c.data.dataset = ""               # a `valle-jax prepare` output: <out>/<builder>/<version>
  c.data.train_split = "train"
  c.data.eval_split = ""            # "" = no periodic evaluation
  # Length buckets (data.py); an example longer than the largest is cropped at load time to
  # a random window that fits. 75 frames = 1 s: the largest takes the paper's 20 s crops,
  # and 384 phonemes (with stress marks and word boundaries) 20 s of fast speech.
  c.data.frame_buckets = (150, 225, 300, 450, 600, 750, 1200, 1500)
  c.data.phoneme_buckets = (64, 128, 256, 384)
  c.data.max_tokens = 6000          # real acoustic frames per global batch (token budget)
  c.data.max_batch_size = 64
  c.data.prompt_seconds = 3.0       # NAR acoustic prompt length
  # NAR acoustic prompt (data.py): "prefix" (a prefix is the prompt, the rest the target: the
  # layout of zero-shot inference), "segment" (a random window of the utterance is the
  # prompt, the whole utterance the target: the paper's) or "other_utterance" (a window of
  # another utterance of the same speaker).
  c.data.nar_prompt = "prefix"
  # Probability that an example is another utterance of its speaker followed by itself
  # (concatenated; data.py): for corpora of short utterances, so training sequences are as
  # long as zero-shot ones (prompt + text). 0 = single utterances (the paper's LibriLight).
  c.data.same_speaker_pairs = 0.0
  c.data.nar_stage_weights = ()     # NAR stage sampling, one weight per codebook 2..Q (1..Q with nar_codebook1); () = uniform
  c.data.num_threads = 2            # Grain reader threads
  c.data.prefetch = 4               # batches prepared ahead

  c.train = ml_collections.ConfigDict()
  c.train.steps = 800_000
  c.train.model = "ar"              # "ar" | "nar" | "both"
  c.train.grad_accum_steps = 1
  c.train.log_every = 100
  c.train.eval_every = 1000
  c.train.eval_batches = 20
  c.train.nan_max_consecutive = 20

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every = 1000
  c.checkpoint.keep = 3
  c.checkpoint.async_save = True

  # Multi-process runs: a coordinator address (host:port) with the process count and this
  # process's id, or auto=True on TPU pods / SLURM (everything read from the environment).
  c.distributed = ml_collections.ConfigDict()
  c.distributed.coordinator = ""
  c.distributed.num_processes = 1
  c.distributed.process_id = 0
  c.distributed.auto = False
  c.distributed.cpu_collectives = ""   # "gloo" for multi-process CPU runs

  c.debug = ml_collections.ConfigDict()
  c.debug.kill_at_step = -1          # SIGKILL the process after this step (preemption tests)
  c.debug.log_examples = False       # write each step's example indices to metrics.jsonl
  return c
