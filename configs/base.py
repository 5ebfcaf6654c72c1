"""Defaults shared by every experiment config; each config file starts from `base()`.

Override any field on the command line: `--config.model.num_layers=2`.
"""
import ml_collections


def base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  # "valle": VALL-E (valle_jax/models). A variant's configs name their variant here; its
  # package (valle_jax/variants/<name>) gives the models, losses, loader and decoding.
  c.variant = "valle"

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
  # jax.nn.dot_product_attention's implementation: "xla" (any device) | "cudnn" (cuDNN flash
  # attention: NVIDIA GPUs, compute_dtype "bfloat16")
  c.model.attention = "xla"
  # Per-block activation rematerialisation in training: "none" | "full" (recompute each block
  # in the backward pass) | "dots_saveable" (keep matmul outputs, recompute the rest).
  c.model.remat = "none"
  c.model.ar_group_size = 1          # VALL-E 2 grouped code modeling: frames per AR step
  # Architecture switches that make the function lifeiteng/vall-e's (configs/lifeiteng.py,
  # docs/fidelity.md); the defaults are this project's paper models.
  c.model.mlp_activation = "gelu"    # "gelu" (tanh approximation) | "relu" (lifeiteng)
  c.model.ar_position_scale = False  # True: a learned scale (alpha) on each AR segment's positions
  c.model.ar_bos = True              # False: no BOS; the AR never predicts the first frame
  c.model.ar_head_bias = True        # False: the AR's output layer has no bias
  c.model.nar_stage_conditioning = "adaln"  # "adaln" (VALL-E) | "token" (VALL-E 2)
  c.model.nar_tie_output = True      # prediction layer j tied to acoustic embedding j+1
  # 1: codebook j is predicted by acoustic embedding j+1 (0-based) and the last one by an
  # untied layer (lifeiteng); 0: by embedding j, its own.
  c.model.nar_tie_offset = 0

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
  c.data.nar_stage_weights = ()     # NAR stage sampling, one weight per codebook 2..Q; () = uniform
  c.data.num_threads = 2            # Grain reader threads
  c.data.prefetch = 4               # batches prepared ahead
  # Grain worker processes loading batches (0 = in this process, with num_threads readers);
  # a run resumes with the same count. `python -m valle_jax.bench input` says how many a
  # device needs.
  c.data.workers = 0
  # Batches put on the devices ahead of the step, by a background thread while the step runs
  # (0 = on the main thread, when the step asks for it).
  c.data.device_prefetch = 2

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
