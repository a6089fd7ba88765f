"""rnn_transformer.parallel on one device: names, meshes, rules, refusals."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_transformer import parallel
from rnn_transformer.models.backbones import build_backbone
from rnn_transformer.models.model_config import BACKBONES
from rnn_transformer.models.model_config import ModelConfig
from rnn_transformer.parallel import axis_names as names
from rnn_transformer.training import train
from tests.script_helpers import load_config

VOCAB, DIM, HEADS, KV_HEADS, MLP = 11, 16, 4, 2, 40

TRANSFORMER_VARIANTS = {
    "gqa": dict(num_kv_heads=KV_HEADS),
    "scanned": dict(scan_layers=True),
    "learned_positions": dict(positional="learned", max_len=32),
    "float_inputs": dict(vocab_size=None, output_size=3),
    "tied": dict(tie_embeddings=True),
}


def _configs():
  for backbone in BACKBONES:
    for causal in (True, False):
      base = dict(backbone=backbone, vocab_size=VOCAB, model_dim=DIM,
                  num_layers=2, causal=causal)
      if backbone != "transformer":
        yield f"{backbone}-causal={causal}", base
        continue
      base.update(num_heads=HEADS, mlp_dim=MLP)
      yield f"transformer-causal={causal}", base
      for variant, fields in TRANSFORMER_VARIANTS.items():
        yield f"transformer-{variant}-causal={causal}", {**base, **fields}


CONFIGS = dict(_configs())


def _abstract_params(fields):
  config = ModelConfig(**fields)
  x = (jnp.zeros((2, 8), jnp.int32) if config.vocab_size else
       jnp.zeros((2, 8, 5), jnp.float32))
  return config, jax.eval_shape(build_backbone(config).init,
                                jax.random.key(0), x)["params"]


@pytest.mark.parametrize("label", sorted(CONFIGS))
def test_every_parameter_of_every_backbone_is_named(label):
  config, params = _abstract_params(CONFIGS[label])
  axes = parallel.logical_axes(params)
  sizes = {names.VOCAB: config.vocab_size or config.output_size,
           names.HEADS: HEADS, names.KV_HEADS: config.num_kv_heads or HEADS,
           names.HEAD_DIM: DIM // HEADS, names.MLP: MLP,
           names.LAYERS: config.num_layers}
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  named = jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, tuple))
  assert len(named) == len(leaves)
  for (path, leaf), logical in zip(leaves, named):
    assert len(logical) == leaf.ndim, jax.tree_util.keystr(path)
    for name, size in zip(logical, leaf.shape):
      assert name is None or name in parallel.LOGICAL_AXES
      if name in sizes and config.backbone == "transformer":
        assert size == sizes[name], (jax.tree_util.keystr(path), name, size)
      if name == names.GATES:  # fused gates: a multiple of the hidden size
        assert size % DIM == 0, jax.tree_util.keystr(path)


def test_an_unnamed_parameter_is_refused_and_extra_rules_name_it():
  params = {"mine": {"weights": jax.ShapeDtypeStruct((4, 8), jnp.float32)}}
  with pytest.raises(parallel.UnnamedParameterError,
                     match=r"no logical axis rule names mine/weights"):
    parallel.logical_axes(params)
  axes = parallel.logical_axes(params, extra_rules=[
      (r"mine/weights$", ("embed", "mlp"))])
  assert axes == {"mine": {"weights": ("embed", "mlp")}}


def test_a_rule_of_the_wrong_rank_is_refused():
  params = {"mlp": {"wi": {"kernel": jnp.zeros((2, 3, 4, 5))}}}
  with pytest.raises(parallel.UnnamedParameterError,
                     match=r"mlp/wi/kernel has rank 4"):
    parallel.logical_axes(params)


def _mesh(axes):
  return jax.sharding.Mesh(
      np.asarray(jax.devices()[:1], dtype=object).reshape((1,) * len(axes)),
      axes)


def test_partition_spec_splits_each_mesh_axis_once_and_keeps_indivisible():
  class FakeMesh:  # partition_spec reads only the axis sizes
    shape = {"fsdp": 4, "tensor": 2}
  rules = (("embed", ("fsdp",)), ("hidden", ("fsdp",)),
           ("vocab", ("tensor",)))
  assert parallel.partition_spec(("hidden", "embed"), (8, 8), FakeMesh,
                                 rules) == jax.sharding.PartitionSpec("fsdp")
  with pytest.warns(parallel.ReplicatedDimensionWarning,
                    match=r"w: dimension 'vocab' of size 97 is not divisible"):
    spec = parallel.partition_spec(("vocab", "embed"), (97, 8), FakeMesh,
                                   rules, where="w")
  assert spec == jax.sharding.PartitionSpec(None, "fsdp")


@pytest.mark.parametrize("shape, axes, error, message", [
    ((2,), ("data",), ValueError, r"mesh.shape: \(2,\) holds 2 devices, but "
     r"there are 1"),
    ((-1, -1), ("data", "fsdp"), ValueError, r"at most one -1"),
    ((0,), ("data",), ValueError, r"positive sizes"),
    ((-1,), ("data", "data"), ValueError, r"must be distinct"),
    ((-1,), ("model",), ValueError, r"expected names among"),
    ((-1, 1), ("data",), ValueError, r"one size per axis"),
    ("8", ("data",), TypeError, r"mesh.shape: expected a sequence of ints"),
    ((-1,), "data", TypeError, r"mesh.axes: expected a sequence of axis"),
    ((1.5,), ("data",), ValueError, r"non-empty sequence of ints"),
])
def test_bad_meshes_are_named(shape, axes, error, message):
  with pytest.raises(error, match=message):
    parallel.make_mesh(shape, axes)


def test_make_mesh_fills_the_rest():
  mesh = parallel.make_mesh((-1, 1), ("fsdp", "tensor"))
  assert dict(mesh.shape) == {"fsdp": jax.device_count(), "tensor": 1}


@pytest.mark.parametrize("strategy, axes, rules, message", [
    ("fdsp", ("data",), (), r"sharding.strategy: expected one of"),
    ("fsdp", ("data",), (), r"strategy 'fsdp' needs the mesh axes"),
    ("fsdp_tp", ("fsdp",), (), r"needs the mesh axes \('fsdp', 'tensor'\)"),
    ("custom", ("data",), (), r"strategy 'custom' needs rules"),
    ("custom", ("fsdp",), (("embedd", "fsdp"),), r"unknown logical axis"),
    ("custom", ("fsdp",), (("batch", "fsdp"),), r"unknown logical axis"),
    ("custom", ("fsdp",), (("embed", "tensor"),), r"names mesh axes"),
    ("custom", ("fsdp",), (("embed",),), r"pairs, got the entry"),
    ("dp", ("data",), (("embed", "data"),), r"only strategy 'custom' takes"),
])
def test_bad_strategies_are_named(strategy, axes, rules, message):
  with pytest.raises(ValueError, match=message):
    parallel.strategy_rules(strategy, _mesh(axes), rules)


def test_custom_rules_accept_names_tuples_and_none():
  rules = parallel.strategy_rules(
      "custom", _mesh(("fsdp", "tensor")),
      (("embed", "fsdp"), ("mlp", ("tensor",)), ("vocab", None)))
  assert rules == (("embed", ("fsdp",)), ("mlp", ("tensor",)), ("vocab", ()))


def test_sharded_init_creates_the_state_in_its_shardings():
  mesh = parallel.make_mesh((-1,), ("fsdp",))
  rules = parallel.strategy_rules("fsdp", mesh)
  model = build_backbone(ModelConfig(**CONFIGS["transformer-causal=True"]))
  state, shardings = parallel.sharded_init(
      lambda key: model.init(key, jnp.zeros((2, 8), jnp.int32))["params"],
      mesh, rules, jax.random.key(0))
  for leaf, sharding in zip(jax.tree.leaves(state), jax.tree.leaves(
      shardings)):
    assert leaf.sharding == sharding
  held = parallel.bytes_per_device(state)
  assert sum(held.values()) == sum(x.nbytes for x in jax.tree.leaves(state))


def test_attention_axes_keep_heads_whole_when_they_do_not_divide():
  class FakeMesh:
    shape = {"data": 2, "tensor": 4}
  sharding = parallel.ActivationSharding(FakeMesh, ("data",), ("tensor",))
  assert sharding.attention_axes(8, 4) == (("data",), ("tensor",))
  assert sharding.attention_axes(8, 2) == (("data",), ())  # kv heads: 2 < 4
  mesh = _mesh(("data", "tensor"))
  assert parallel.current() is None
  with parallel.activation_sharding(mesh, parallel.strategy_rules("tp", mesh)):
    assert parallel.current().head_axes == ("tensor",)
    assert parallel.current().batch_axes == ("data",)
  assert parallel.current() is None


def test_a_relaunch_may_change_the_mesh_and_strategy(tmp_path):
  config = load_config("copy", "lstm")
  train._write_config(config, str(tmp_path))
  config.sharding.strategy = "fsdp"
  config.mesh.shape = (-1,)
  config.mesh.axes = ("fsdp",)
  train.check_workdir(config, str(tmp_path))  # no error
  config.model.model_dim = 64
  with pytest.raises(train.WorkdirMismatchError, match="model.model_dim"):
    train.check_workdir(config, str(tmp_path))


def test_a_config_saved_before_the_mesh_fields_is_data_parallel():
  config = load_config("copy", "lstm")
  del config["mesh"]
  del config["sharding"]
  mesh, rules = train.train_config.mesh_and_rules(config)
  assert mesh.axis_names == ("data",) and rules == ()


def test_custom_rules_from_a_saved_config_are_lists():
  config = load_config("copy", "lstm")
  config.sharding.strategy = "custom"
  config.sharding.rules = [["embed", "fsdp"], ["hidden", None]]
  config.mesh.axes = ("fsdp",)
  _, rules = train.train_config.mesh_and_rules(config)
  assert rules == (("embed", ("fsdp",)), ("hidden", ()))


def _layers_alone():
  """Every public layer on its own, as research code builds it."""
  import rnn_transformer as rt
  cfg = ModelConfig(**CONFIGS["transformer-causal=True"])
  x = jnp.zeros((2, 8, DIM))
  cells = {name: getattr(rt, name)(DIM) for name in (
      "SimpleRNNCell", "LSTMCell", "GRUCell", "MinGRU", "MinLSTM", "LRU")}
  layers = {f"{name}": (cell, (jax.random.key(1), x[:, 0].shape), "cell")
            for name, cell in cells.items()}
  layers.update({
      f"RNN({name})": (rt.RNN(cell), (x,), "call") for name, cell in
      cells.items()})
  layers.update({
      "Bidirectional": (rt.Bidirectional(rt.RNN(rt.GRUCell(DIM)),
                                         rt.RNN(rt.GRUCell(DIM))), (x,),
                        "call"),
      "StackedRNN": (rt.StackedRNN([rt.LSTMCell(DIM), rt.LSTMCell(DIM)]),
                     (x,), "call"),
      "MultiHeadAttention": (rt.MultiHeadAttention(num_heads=HEADS), (x,),
                             "call"),
      "LearnedPositionEmbedding": (rt.LearnedPositionEmbedding(
          max_len=8, features=DIM), (jnp.zeros((2, 8), jnp.int32),), "call"),
      "TransformerBlock": (rt.TransformerBlock(cfg), (x,), "call"),
  })
  return layers


@pytest.mark.parametrize("name", sorted(_layers_alone()))
def test_every_public_layer_alone_is_named(name):
  module, args, kind = _layers_alone()[name]
  if kind == "cell":  # a cell's parameters come from one step
    key, shape = args
    carry = module.initialize_carry(key, shape)
    variables = jax.eval_shape(module.init, key, carry,
                               jnp.zeros(shape))
  else:
    variables = jax.eval_shape(module.init, jax.random.key(0), *args)
  axes = parallel.logical_axes(variables["params"])
  for names_, leaf in zip(
      jax.tree.leaves(axes, is_leaf=lambda t: isinstance(t, tuple)),
      jax.tree.leaves(variables["params"])):
    assert len(names_) == leaf.ndim
