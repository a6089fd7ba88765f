"""Many devices: meshes, logical axis names, strategies, sharded state.

    mesh = parallel.make_mesh((-1, 2), ("fsdp", "tensor"))
    rules = parallel.strategy_rules("fsdp_tp", mesh)
    state, shardings = parallel.sharded_init(init_fn, mesh, rules, key)

See docs/scaling.md.
"""

from rnn_transformer.parallel.axis_names import LOGICAL_AXES
from rnn_transformer.parallel.axis_names import PARAM_RULES
from rnn_transformer.parallel.axis_names import UnnamedParameterError
from rnn_transformer.parallel.axis_names import logical_axes
from rnn_transformer.parallel.mesh import MESH_AXES
from rnn_transformer.parallel.mesh import make_mesh
from rnn_transformer.parallel.partitioning import ActivationSharding
from rnn_transformer.parallel.partitioning import abstract_state
from rnn_transformer.parallel.partitioning import ReplicatedDimensionWarning
from rnn_transformer.parallel.partitioning import activation_sharding
from rnn_transformer.parallel.partitioning import bytes_per_device
from rnn_transformer.parallel.partitioning import constrain_batch
from rnn_transformer.parallel.partitioning import current
from rnn_transformer.parallel.partitioning import partition_spec
from rnn_transformer.parallel.partitioning import replicate
from rnn_transformer.parallel.partitioning import sharded_fraction
from rnn_transformer.parallel.partitioning import sharded_init
from rnn_transformer.parallel.partitioning import tree_shardings
from rnn_transformer.parallel.rules import STRATEGIES
from rnn_transformer.parallel.rules import batch_axes
from rnn_transformer.parallel.rules import strategy_rules

__all__ = [
    "LOGICAL_AXES", "MESH_AXES", "PARAM_RULES", "STRATEGIES",
    "ActivationSharding", "ReplicatedDimensionWarning",
    "UnnamedParameterError", "abstract_state", "activation_sharding",
    "batch_axes", "bytes_per_device", "constrain_batch", "current",
    "logical_axes", "make_mesh", "partition_spec", "replicate",
    "sharded_fraction", "sharded_init", "strategy_rules", "tree_shardings",
]
