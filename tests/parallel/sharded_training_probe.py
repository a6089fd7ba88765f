"""Trains one backbone under every strategy on N CPU devices; prints JSON.

    python sharded_training_probe.py DEVICES BACKBONE WORKROOT [--restore DIR]

Launched by `test_sharded_training.py` in a subprocess, because the device
count is fixed when jax starts. With 8 devices: 20 steps under dp, fsdp, tp
and fsdp_tp (final parameters saved to WORKROOT/<strategy>.npz, losses per
step in the JSON), a relaunch that changes strategy half way, a restore of
the fsdp checkpoint into another mesh, and for the Transformer the layout of
a freshly created state and the refusals of bad meshes. With 1 device: the
reference run, and (--restore DIR) DIR's checkpoint restored into one device.
"""

import json
import os
import shutil
import sys
import warnings

DEVICES, BACKBONE, ROOT = int(sys.argv[1]), sys.argv[2], sys.argv[3]
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           f" --xla_force_host_platform_device_count={DEVICES}")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from rnn_transformer import parallel  # noqa: E402
from rnn_transformer.training import train  # noqa: E402
from rnn_transformer.training import train_config  # noqa: E402

STEPS = 20
MESHES = {  # strategy -> (mesh shape, mesh axes)
    "dp": ((-1,), ("data",)),
    "fsdp": ((-1,), ("fsdp",)),
    "tp": ((-1, 2), ("data", "tensor")),
    "fsdp_tp": ((-1, 2), ("fsdp", "tensor")),
}
# The linear recurrences and the Transformer (ring attention) also split
# time (the copy task's 14 steps, 2 ways).
CONTEXT_MESHES = {
    "dp_context": ((4, 2), ("data", "context")),
    "fsdp_context": ((4, 2), ("fsdp", "context")),
}
LINEAR = ("mingru", "minlstm", "lru")


def config(strategy="dp", model_dim=32):
  c = train_config.task_config("copy", BACKBONE, delay=6, copy_len=4)
  if BACKBONE == "transformer":
    c.model.max_len = 16
    c.model.num_heads = 4
  c.model.model_dim = model_dim
  c.train.steps = STEPS
  c.train.warmup_steps = 2
  c.train.batch_size = 16
  c.train.log_every = 1
  c.train.eval_every = STEPS
  c.train.eval_batches = 1
  c.train.checkpoint_every = 10
  c.train.progress_bar = False
  c.sharding.strategy = strategy.removesuffix("_context")
  if DEVICES > 1:
    c.mesh.shape, c.mesh.axes = {**MESHES, **CONTEXT_MESHES}[strategy]
  return c


def losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  return [r["loss"] for r in rows if r["split"] == "train"]


def specs_of(tree):
  return {jax.tree_util.keystr(p): str(x.sharding.spec) for p, x in
          jax.tree_util.tree_flatten_with_path(tree)[0]}


def save_final_params(cfg, workdir, name):
  """The workdir's latest parameters, restored under `cfg`'s mesh, saved
  whole to ROOT/<name>.npz; returns their shardings' specs."""
  trainer = train.Trainer(cfg, workdir)
  try:
    params = trainer.restore_or_init().params
    flat = {jax.tree_util.keystr(p): np.asarray(x) for p, x in
            jax.tree_util.tree_flatten_with_path(trainer.gathered(params))[0]}
    np.savez(os.path.join(ROOT, f"{name}.npz"), **flat)
    return specs_of(params)
  finally:
    trainer.checkpoints.close()


def state_layout(strategy, model_dim):
  """Sharded fraction and per-device bytes of a freshly created state."""
  cfg = config(strategy, model_dim=model_dim)
  trainer = train.Trainer(cfg, os.path.join(ROOT, f"layout_{strategy}"))
  try:
    state = trainer.init_state()
    both = (state.params, state.opt_state)
    held = parallel.bytes_per_device(both)
    return dict(params_fraction=parallel.sharded_fraction(state.params),
                opt_fraction=parallel.sharded_fraction(state.opt_state),
                total_bytes=sum(x.nbytes for x in jax.tree.leaves(both)),
                max_device_bytes=max(held.values()), devices=len(held),
                specs=specs_of(state.params))
  finally:
    trainer.checkpoints.close()


def refusals():
  """The message of every bad mesh, strategy or batch, before any work."""
  cases = {
      "mesh_size": dict(shape=(3,)),
      "mesh_two_rest": dict(shape=(-1, -1), axes=("data", "tensor")),
      "unknown_axis": dict(axes=("model",)),
      "idle_axis": dict(shape=(4, 2), axes=("data", "tensor")),
      "strategy_typo": dict(strategy="fdsp"),
      "missing_axis": dict(strategy="fsdp"),
      "rule_unknown_logical": dict(strategy="custom", axes=("fsdp",),
                                   rules=(("embedd", "fsdp"),)),
      "rule_unknown_mesh": dict(strategy="custom", axes=("fsdp",),
                                rules=(("embed", "tensor"),)),
      "batch": dict(batch_size=12),
      "context_rnn": dict(shape=(4, 2), axes=("data", "context"),
                          backbone="lstm"),
      "context_indivisible": dict(shape=(2, 4), axes=("data", "context"),
                                  backbone="lru"),
  }
  out = {}
  for name, case in cases.items():
    cfg = config("dp")
    if "backbone" in case:
      cfg = train_config.task_config("copy", case["backbone"], delay=6,
                                     copy_len=4)
    cfg.mesh.shape = case.get("shape", (-1,))
    cfg.mesh.axes = case.get("axes", ("data",))
    cfg.sharding.strategy = case.get("strategy", "dp")
    cfg.sharding.rules = case.get("rules", ())
    cfg.train.batch_size = case.get("batch_size", 16)
    try:
      train_config.validate(cfg)
      out[name] = None
    except (TypeError, ValueError) as e:
      out[name] = f"{type(e).__name__}: {e}"
  return out


def main():
  report = {"devices": jax.device_count(), "losses": {}}
  if DEVICES == 1:
    workdir = os.path.join(ROOT, "reference")
    train.train_and_evaluate(config(), workdir)
    report["losses"]["reference"] = losses(workdir)
    save_final_params(config(), workdir, "reference")
    if "--restore" in sys.argv:  # another run's checkpoint, on one device
      source = sys.argv[sys.argv.index("--restore") + 1]
      save_final_params(config(), source, "restored_into_1")
    print(json.dumps(report))
    return
  strategies = dict(MESHES, **(CONTEXT_MESHES if BACKBONE == "transformer"
                               else {}))
  for strategy in (CONTEXT_MESHES if BACKBONE in LINEAR else strategies):
    workdir = os.path.join(ROOT, strategy)
    train.train_and_evaluate(config(strategy), workdir)
    report["losses"][strategy] = losses(workdir)
    save_final_params(config(strategy), workdir, strategy)
  if BACKBONE in LINEAR:
    print(json.dumps(report))
    return
  # The fsdp checkpoint restored under tp on a (4, 2) mesh.
  report["fsdp_into_tp_specs"] = save_final_params(
      config("tp"), os.path.join(ROOT, "fsdp"), "fsdp_into_tp")
  # A kill after the step-10 checkpoint of the fsdp run, then a relaunch
  # under fsdp_tp: its steps 11-20 against the uninterrupted fsdp run's.
  resumed = os.path.join(ROOT, "resumed")
  shutil.copytree(os.path.join(ROOT, "fsdp"), resumed)
  shutil.rmtree(os.path.join(resumed, "checkpoints", str(STEPS)))
  train.train_and_evaluate(config("fsdp_tp"), resumed)
  report["losses"]["fsdp_then_fsdp_tp"] = losses(resumed)[-(STEPS - 10):]
  if BACKBONE == "transformer":
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      report["layout"] = {s: state_layout(s, 128) for s in ("fsdp", "tp")}
    report["warnings"] = [str(w.message) for w in caught
                          if w.category is parallel.ReplicatedDimensionWarning]
    report["refusals"] = refusals()
  print(json.dumps(report))


if __name__ == "__main__":
  main()
