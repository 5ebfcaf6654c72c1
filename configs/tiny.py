"""A tiny model for tests and smoke runs on CPU (seconds to compile, milliseconds a step)."""
from configs.base import base


def get_config():
  c = base()
  c.model.num_layers = 2
  c.model.num_heads = 2
  c.model.width = 32
  c.model.mlp_dim = 64
  c.model.phoneme_vocab_size = 128
  c.optim.warmup_steps = 10
  c.train.steps = 100
  return c
