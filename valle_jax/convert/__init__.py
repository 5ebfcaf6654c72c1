"""Checkpoints of other VALL-E implementations -> valle-jax parameters (pure numpy).

    from valle_jax.convert import lifeiteng
    model_cfg, params, symbols = lifeiteng.convert(state_dict, num_heads=16)

Each converter maps one implementation's state dict onto the model config that computes the
same function (architecture switches in `configs/base.py`) and the parameters of
`models.ARModel` / `models.NARModel` (`nnx.to_pure_dict` layout), reparameterising exactly
where the two differ only in how they write the same function. `valle-jax
import-checkpoint` (`valle_jax/import_checkpoint.py`) writes the result as a run that
`valle-jax synthesize` loads.
"""
