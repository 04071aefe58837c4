"""The optimizer of the seed paper's recipe and one explicit, jitted train step.

The step is a pure function of ``(state, batch, key)``: ``model.stateless_call`` gives the loss parts
(:func:`batch_losses`: the five losses, any a subclass adds, and Keras' regularisers), ``jax.value_and_grad``
their gradients with respect to the variables the stage trains (frozen ones are
not differentiated at all), and optax updates them. A step whose loss or gradients are not finite leaves
the state unchanged and says so in its metrics.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import keras
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from maskrcnn.config import StageConfig, TrainConfig
from maskrcnn.model.backbone import trainable_groups


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
    """Which of ``model.trainable_variables`` a stage trains (Matterport's ``layers`` argument).

    ``"heads"``: everything but the backbone; ``"all"``: everything; ``"N+"`` (``3+``, ``4+``, ``5+`` for a
    ResNet): the heads and the backbone's trainable groups numbered N and above, as the backbone declares
    them (:func:`maskrcnn.model.backbone.declare`). Backbone layers outside every group train only in
    ``"all"``.
    """
    backbone = {id(v) for v in model.backbone.weights}
    if layers == "all":
        return [True] * len(model.trainable_variables)
    if layers == "heads":
        first = None
    elif layers.endswith("+") and layers[:-1].isdigit():
        first, groups = int(layers[:-1]), trainable_groups(model.backbone)
        if not groups:
            raise ValueError(
                f"stage layers {layers!r} need a backbone that declares trainable groups; "
                f"{model.backbone.name} declares none, so train it with 'heads' or 'all' "
                "(or declare groups: maskrcnn.model.backbone.declare)"
            )
        if first not in groups:
            raise ValueError(
                f"stage layers {layers!r}: backbone {model.backbone.name} has no group {first}; "
                f"its groups are {sorted(groups)} (use 'heads', 'all' or 'N+' for one of them)"
            )
    else:
        raise ValueError(f"stage layers {layers!r} unknown; expected 'heads', 'all' or 'N+' (e.g. '3+')")
    group_of = {}
    if first is not None:
        for group, names in trainable_groups(model.backbone).items():
            for name in names:
                for v in model.backbone.get_layer(name).weights:
                    group_of[id(v)] = group
    return [
        id(v) not in backbone or (first is not None and group_of.get(id(v), -1) >= first)
        for v in model.trainable_variables
    ]


def decay_mask(model: keras.Model) -> list[bool]:
    """Weight decay applies to convolution and dense kernels only, not to biases or batch-norm parameters."""
    return [len(v.shape) >= 2 for v in model.trainable_variables]


def make_optimizer(train: TrainConfig, schedule, decay: list[bool]) -> optax.GradientTransformation:
    """Clip by global norm, decoupled-from-loss L2 weight decay on kernels, then SGD with momentum (the
    paper's) or Adam (``train.optimizer``; b1 = ``train.momentum``)."""
    if train.optimizer == "adam":
        update = optax.adam(schedule, b1=train.momentum, b2=0.999)
    else:
        update = optax.sgd(schedule, momentum=train.momentum)
    return optax.chain(
        optax.clip_by_global_norm(train.clip_global_norm),
        optax.add_decayed_weights(train.weight_decay, mask=decay),
        update,
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


REGULARIZATION = "regularization"  # the loss part that holds Keras' own losses of the model's layers


def batch_losses(model: keras.Model, trainable, non_trainable, batch, key):
    """The loss parts of one training batch, and the non-trainable variables the call updated.

    The parts are the model's ``loss_parts`` (the five Mask R-CNN losses and any term a subclass adds) and,
    when the layers have any, Keras' own losses (kernel and activity regularisers, ``add_loss``) summed
    as :data:`REGULARIZATION`. Training minimises the sum of the parts; validation reports them.
    """
    parts, non_trainable, extra = model.stateless_call(
        trainable, non_trainable, batch["image"], batch, key=key, training=True, return_losses=True
    )
    if extra:
        parts = {**parts, REGULARIZATION: sum(jnp.asarray(x, jnp.float32) for x in extra)}
    return parts, non_trainable


def make_eval_step(model: keras.Model, mask: list[bool]):
    """Returns ``losses(state, batch) -> parts``, jitted: :func:`batch_losses` without an update, with a
    fixed key for the ROI sampling (validation)."""

    @jax.jit
    def losses(state: TrainState, batch):
        trainable = _merge(state.trained, state.frozen, mask)
        return batch_losses(model, trainable, state.non_trainable, batch, jax.random.PRNGKey(0))[0]

    return losses


def make_train_step(model: keras.Model, optimizer: optax.GradientTransformation, mask: list[bool], schedule):
    """Returns ``step(state, batch, key) -> (state, metrics)``, jitted.

    ``metrics`` holds the loss parts (:func:`batch_losses`), their sum ``loss``, the learning rate ``lr``
    of this step, the gradient's global norm ``grad_norm`` before clipping and ``finite`` (False: the
    update was skipped).
    """

    def loss_fn(trained, frozen, non_trainable, batch, key):
        parts, non_trainable = batch_losses(model, _merge(trained, frozen, mask), non_trainable, batch, key)
        return sum(parts.values()), (parts, non_trainable)

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


class Stage(NamedTuple):
    """What one training stage runs (:func:`prepare_stage`)."""

    mask: list[bool]  # which of model.trainable_variables it trains
    schedule: Callable  # step -> learning rate
    optimizer: optax.GradientTransformation
    state: TrainState  # the starting state, copies of the model's variables
    step: Callable  # the jitted (state, batch, key) -> (state, metrics)


def prepare_stage(
    model: keras.Model, train: TrainConfig, stage: StageConfig, steps_per_epoch: int, *, schedule=None
) -> Stage:
    """The trainable mask, learning-rate schedule, optimizer, initial state and jitted step of ``stage``.

    ``schedule`` (step -> learning rate) replaces the paper's linear decay (:func:`learning_rate_schedule`,
    the default). Weight decay (:func:`decay_mask`) reaches only the variables the stage trains: frozen
    ones are neither differentiated nor decayed.
    """
    if schedule is None:
        schedule = learning_rate_schedule(
            stage, steps_per_epoch, power=train.lr_power, per_step=train.lr_per_step
        )
    mask = trainable_mask(model, stage.layers)
    decay = [d for d, trained in zip(decay_mask(model), mask, strict=True) if trained]
    optimizer = make_optimizer(train, schedule, decay)
    state = init_state(model, optimizer, mask)
    return Stage(mask, schedule, optimizer, state, make_train_step(model, optimizer, mask, schedule))


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
