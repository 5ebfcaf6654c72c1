"""lifeiteng/vall-e's VALL-E at paper size (12 layers, 16 heads, width 1024): the function
its `VALLE(1024, 16, 12, norm_first=True, add_prenet=False, prefix_mode=1,
share_embedding=True, prepend_bos=False)` computes. `valle-jax import-checkpoint
--format=lifeiteng` writes this config with a converted checkpoint; docs/fidelity.md lists
what differs from configs/paper.py and why."""
from configs import paper


def get_config():
  c = paper.get_config()   # the paper's recipe; lifeiteng's architecture
  c.model.mlp_activation = "relu"
  c.model.ar_position_scale = True
  c.model.ar_bos = False
  c.model.ar_head_bias = False
  c.model.nar_tie_offset = 1
  c.data.nar_prompt = "prefix"   # prefix_mode=1: the NAR reads prompt transcript + text
  # float32, as lifeiteng computes: the converted models give its logits to 1e-5
  # (tests/test_vs_lifeiteng.py); bfloat16 is a `--config.model.compute_dtype` away.
  c.model.compute_dtype = "float32"
  return c
