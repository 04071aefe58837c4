"""The optimizer of the seed paper's recipe and one explicit, jitted train step.

The step is a pure function of ``(state, batch, key)``: ``model.stateless_call`` gives the five losses,
``jax.value_and_grad`` their gradients with respect to the variables the stage trains (frozen ones are
not differentiated at all), and optax updates them. A step whose loss or gradients are not finite leaves
the state unchanged and says so in its metrics.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import keras
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from maskrcnn.config import StageConfig, TrainConfig
from maskrcnn.model.backbone import stage_of_layer

# Which backbone stages train in each stage setting (Matterport's `layers` argument of `train`):
# "heads" trains none of the backbone, "3+" ResNet stages 3-5, ..., "all" every layer.
FIRST_TRAINED_STAGE = {"heads": 99, "5+": 5, "4+": 4, "3+": 3, "all": 0}


def learning_rate_schedule(
    stage: StageConfig, steps_per_epoch: int, *, power: float = 1.0, per_step: bool = False
):
    """The seed paper's Eq. 1, ``lr = start_lr * (1 - epoch / final_epoch) ** power``, as an optax schedule.

    ``epoch`` counts from 0 within the stage, so the first epoch runs at ``start_lr`` and the last at
    ``start_lr / final_epoch`` (power 1). With ``per_step`` the epoch is fractional (step / steps_per_epoch).
    """

    def schedule(step):
        epoch = step / steps_per_epoch
        if not per_step:
            epoch = jnp.floor(epoch)
        return stage.learning_rate * jnp.maximum(1.0 - epoch / stage.epochs, 0.0) ** power

    return schedule


def trainable_mask(model: keras.Model, layers: str) -> list[bool]:
    """Which of ``model.trainable_variables`` a stage trains (``heads``, ``3+``, ``4+``, ``5+``, ``all``)."""
    if layers not in FIRST_TRAINED_STAGE:
        raise ValueError(f"stage layers {layers!r} unknown; expected one of {list(FIRST_TRAINED_STAGE)}")
    first = FIRST_TRAINED_STAGE[layers]
    backbone_stage = {}
    for layer in model.backbone.layers:
        for v in layer.weights:
            backbone_stage[id(v)] = stage_of_layer(layer.name)
    return [backbone_stage.get(id(v), 100) >= first for v in model.trainable_variables]


def decay_mask(model: keras.Model) -> list[bool]:
    """Weight decay applies to convolution and dense kernels only, not to biases or batch-norm parameters."""
    return [len(v.shape) >= 2 for v in model.trainable_variables]


def make_optimizer(train: TrainConfig, schedule, decay: list[bool]) -> optax.GradientTransformation:
    """Clip by global norm, decoupled-from-loss L2 weight decay on kernels, SGD with momentum."""
    return optax.chain(
        optax.clip_by_global_norm(train.clip_global_norm),
        optax.add_decayed_weights(train.weight_decay, mask=decay),
        optax.sgd(schedule, momentum=train.momentum),
    )


class TrainState(NamedTuple):
    trained: list  # values of the variables this stage trains
    frozen: list  # values of the trainable variables this stage keeps fixed
    non_trainable: list  # batch-norm statistics and other non-trainable variables
    opt_state: optax.OptState
    step: jax.Array  # int32 scalar, counts steps within the stage


def _split(values, mask):
    return [v for v, m in zip(values, mask, strict=True) if m], [
        v for v, m in zip(values, mask, strict=True) if not m
    ]


def _merge(trained, frozen, mask):
    trained, frozen = iter(trained), iter(frozen)
    return [next(trained) if m else next(frozen) for m in mask]


def init_state(model: keras.Model, optimizer: optax.GradientTransformation, mask: list[bool]) -> TrainState:
    """A train state holding copies of the model's variables (the step donates its state's buffers, so the
    model's own stay valid for inference during training)."""
    values = [jnp.copy(v.value) for v in model.trainable_variables]
    trained, frozen = _split(values, mask)
    return TrainState(
        trained=trained,
        frozen=frozen,
        non_trainable=[jnp.copy(v.value) for v in model.non_trainable_variables],
        opt_state=optimizer.init(trained),
        step=jnp.zeros((), jnp.int32),
    )


def write_state(model: keras.Model, state: TrainState, mask: list[bool]) -> None:
    """Assigns the values in ``state`` back to the model's variables (for saving or inference)."""
    for var, value in zip(model.trainable_variables, _merge(state.trained, state.frozen, mask), strict=True):
        var.assign(value)
    for var, value in zip(model.non_trainable_variables, state.non_trainable, strict=True):
        var.assign(value)


def make_train_step(model: keras.Model, optimizer: optax.GradientTransformation, mask: list[bool], schedule):
    """Returns ``step(state, batch, key) -> (state, metrics)``, jitted.

    ``metrics`` holds the five losses, their sum ``loss``, the learning rate ``lr`` of this step, the
    gradient's global norm ``grad_norm`` before clipping and ``finite`` (False: the update was skipped).
    """

    def loss_fn(trained, frozen, non_trainable, batch, key):
        trainable = _merge(trained, frozen, mask)
        parts, non_trainable = model.stateless_call(
            trainable, non_trainable, batch["image"], batch, key=key, training=True
        )
        total = sum(parts.values())  # the five losses, and any term a model's loss_parts adds
        return total, (parts, non_trainable)

    def step(state: TrainState, batch, key):
        (total, (parts, non_trainable)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.trained, state.frozen, state.non_trainable, batch, key
        )
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(total) & jnp.isfinite(grad_norm)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.trained)
        trained = optax.apply_updates(state.trained, updates)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
        new_state = TrainState(
            trained=keep(trained, state.trained),
            frozen=state.frozen,
            non_trainable=keep(non_trainable, state.non_trainable),
            opt_state=keep(opt_state, state.opt_state),
            step=state.step + 1,  # the batch is consumed either way; skips are counted by the loop
        )
        metrics = {
            **parts,
            "loss": total,
            "lr": schedule(state.step),
            "grad_norm": grad_norm,
            "finite": finite,
        }
        return new_state, metrics

    return jax.jit(step, donate_argnums=(0,))


def data_mesh(devices=None) -> Mesh:
    """A one-axis mesh ``("data",)`` over all devices (of every host in a multi-host job)."""
    return Mesh(np.asarray(devices if devices is not None else jax.devices()), ("data",))


def replicate(tree, mesh: Mesh):
    """Places a pytree (the train state) on every device of ``mesh``."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def shard_batch(batch: dict, mesh: Mesh) -> dict:
    """Splits a global batch of numpy arrays along its first axis over the devices of ``mesh``.

    Every host builds the same global batch (the input pipeline is deterministic) and contributes its own
    rows, so the same code runs on one device, several local devices and several hosts.
    """
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    hosts, host = jax.process_count(), jax.process_index()

    def put(x):
        x = np.asarray(x)
        if x.shape[0] % mesh.size:
            raise ValueError(
                f"batch of {x.shape[0]} images cannot be split over {mesh.size} devices; "
                f"set train.batch_size to a multiple of {mesh.size}"
            )
        rows = x.shape[0] // hosts
        return jax.make_array_from_process_local_data(sharding, x[host * rows : (host + 1) * rows], x.shape)

    return {k: put(v) for k, v in batch.items()}
