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
  c.model.nar_stage_conditioning = "adaln"  # "adaln" (VALL-E) | "token" (VALL-E 2)
  c.model.nar_tie_output = True      # prediction layer j tied to acoustic embedding j+1

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
  c.optim.grad_clip_norm = 1.0

  c.train = ml_collections.ConfigDict()
  c.train.steps = 800_000
  c.train.model = "ar"             # "ar" | "nar" | "both"
  return c
