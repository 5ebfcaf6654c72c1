"""Sharding: mesh construction, logical-axis PartitionSpecs, sharded == unsharded forward."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from configs import tiny
from valle_jax import models, sharding
from valle_jax.errors import UserError


def _mesh_cfg(data, fsdp, tensor):
  return ml_collections.ConfigDict({"data": data, "fsdp": fsdp, "tensor": tensor})


def test_eight_simulated_devices():
  assert jax.device_count() == 8


def test_make_mesh_sizes_and_errors():
  mesh = sharding.make_mesh(_mesh_cfg(-1, 2, 2))
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
  assert dict(sharding.make_mesh(_mesh_cfg(-1, 1, 1)).shape)["data"] == 8
  with pytest.raises(UserError, match="needs 6 devices"):
    sharding.make_mesh(_mesh_cfg(3, 2, 1))
  with pytest.raises(UserError, match="cannot be split"):
    sharding.make_mesh(_mesh_cfg(-1, 3, 1))
  with pytest.raises(UserError, match="At most one"):
    sharding.make_mesh(_mesh_cfg(-1, -1, 1))


def test_logical_rules():
  mesh = sharding.make_mesh(_mesh_cfg(2, 2, 2))
  assert sharding.logical_to_spec(("embed", "heads", "kv")) == P("fsdp", "tensor", None)
  assert sharding.logical_to_spec(("batch", "length")) == P(("data", "fsdp"), None)
  # A dimension not divisible by its mesh axes is replicated.
  assert sharding.logical_to_spec(("vocab", "embed"), (10, 33), mesh) == P(None, None)
  with pytest.raises(KeyError, match="Unknown logical axis"):
    sharding.logical_to_spec(("width",))


@pytest.fixture(scope="module")
def setup():
  cfg = tiny.get_config()
  mesh = sharding.make_mesh(_mesh_cfg(2, 2, 2))
  batch = {k: jnp.asarray(v) for k, v in models.example_batch(cfg.model, 4, 6, 10).items()}
  return cfg, mesh, batch


@pytest.mark.parametrize("kind", ["ar", "nar"])
def test_sharded_forward_equals_unsharded(setup, kind):
  cfg, mesh, batch = setup
  cls, loss_fn = {"ar": (models.ARModel, models.ar_loss),
                  "nar": (models.NARModel, models.nar_loss)}[kind]
  make = lambda: cls(cfg.model, rngs=nnx.Rngs(0))  # noqa: E731
  reference = make()
  sharded = sharding.create_sharded_model(make, mesh)

  # Parameters carry the expected PartitionSpecs and live on all 8 devices.
  params = nnx.state(sharded, nnx.Param)
  # Blocks are stacked on a leading layer axis, which is never split.
  q_kernel = params["transformer"]["blocks"]["attn"]["q_kernel"]
  assert q_kernel.get_value().sharding.spec == P(None, "fsdp", "tensor", None)
  mlp_in = params["transformer"]["blocks"]["mlp"]["in_kernel"]
  assert mlp_in.get_value().sharding.spec == P(None, "fsdp", "tensor")
  mlp_out = params["transformer"]["blocks"]["mlp"]["out_kernel"]
  assert mlp_out.get_value().sharding.spec == P(None, "tensor", "fsdp")
  assert params["phoneme_embed"].get_value().sharding.spec == P(None, "fsdp")
  assert len(q_kernel.get_value().sharding.device_set) == 8
  # Initialised under jit with output shardings: the same values as eager init (to float
  # rounding of the compiled initialisers).
  for ref_leaf, leaf in zip(jax.tree.leaves(nnx.state(reference, nnx.Param)),
                            jax.tree.leaves(params)):
    np.testing.assert_allclose(np.asarray(ref_leaf), np.asarray(leaf), rtol=1e-6, atol=1e-7)
  nnx.update(reference, jax.device_get(nnx.state(sharded)))   # identical params, one device

  sharded_batch = sharding.shard_batch(batch, mesh)
  assert sharded_batch["codes"].sharding.spec == sharding.BATCH_SPEC
  loss_ref, metrics_ref = nnx.jit(loss_fn)(reference, batch)
  loss, metrics = nnx.jit(loss_fn)(sharded, sharded_batch)
  np.testing.assert_allclose(float(loss), float(loss_ref), rtol=1e-5)
  np.testing.assert_allclose(float(metrics["top10_correct"]),
                             float(metrics_ref["top10_correct"]))
  # Gradients too, leaf by leaf (what training reduces across the mesh).
  grad_fn = nnx.jit(nnx.grad(lambda m, b: loss_fn(m, b)[0]))
  for g_ref, g in zip(jax.tree.leaves(grad_fn(reference, batch)),
                      jax.tree.leaves(grad_fn(sharded, sharded_batch))):
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), atol=1e-6, rtol=1e-4)
