"""A tiny model for tests and smoke runs on CPU (seconds to compile, milliseconds a step)."""
from configs.base import base


def get_config():
  c = base()
  c.model.num_layers = 2
  c.model.num_heads = 2
  c.model.width = 32
  c.model.mlp_dim = 64
  c.model.dropout = 0.0
  c.optim.peak_lr = 3e-3
  c.optim.warmup_steps = 10
  c.data.frame_buckets = (75, 150, 300, 600)
  c.data.phoneme_buckets = (32, 64, 128)
  c.data.max_tokens = 1200
  c.data.max_batch_size = 8
  c.data.prompt_seconds = 1.0
  c.train.steps = 100
  c.train.log_every = 10
  c.train.eval_every = 50
  c.train.eval_batches = 2
  c.checkpoint.every = 50
  return c
