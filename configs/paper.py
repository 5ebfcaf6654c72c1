"""VALL-E as in the paper (arXiv 2301.02111): 12 layers, 16 heads, width 1024, FFN 4096,
dropout 0.1, 8 codebooks of 1024, AdamW with warmup to 5e-4 over 32k steps then linear
decay, 800k steps (LibriLight 60k h, 16 V100, 6k acoustic tokens per GPU), the NAR's
acoustic prompt a random 3 s segment of the same utterance (§5.1). Computed in bfloat16
with float32 parameters (the paper does not say what precision it trained in)."""
from configs.base import base


def get_config():
  c = base()
  c.data.max_tokens = 6000 * 16     # 6k acoustic tokens per GPU on 16 GPUs
  c.data.max_batch_size = 512
  c.data.nar_prompt = "segment"     # the paper's; base's "prefix" is inference's layout
  c.train.model = "both"
  # bfloat16 matmuls and activations; parameters, norms, attention softmax and logits stay
  # float32 (models/layers.py).
  c.model.compute_dtype = "bfloat16"
  return c
