"""The optimiser: AdamW with warmup and cosine decay, and the towers as parameter groups.

A parameter belongs to the image tower, the text tower or the rest (TOWER_RULES); each tower
can have its own peak learning rate (``optimizer.tower_lr``) or be frozen
(``optimizer.freeze``), and the train step logs each group's parameter and update norms
(``tower_norms``).
"""

from __future__ import annotations

import math
import re
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from rmc_jax import sharding as shd

__all__ = ["TOWER_RULES", "TOWERS", "frozen_towers", "make_optimizer", "tower_labels",
           "tower_norms", "tower_options"]

# The optimiser's parameter groups: regexes on the parameter path (sharding.path_name, e.g.
# 'image_encoder/encoder/block_0/attn/qkv/kernel'), first match wins, as in the partition rules.
# A tower is its encoder and its projection into the shared space; everything else (the region
# head and region projection, which learn on top of either tower, and the temperature) is
# 'rest' and always trains at optimizer.learning_rate.
TOWER_RULES = (
    ("image", r"^(image_encoder|image_proj)/"),
    ("text", r"^(text_encoder|text_proj)/"),
)
TOWERS = tuple(name for name, _ in TOWER_RULES)


def tower_labels(params):
    """The group of every parameter: a tree of 'image' / 'text' / 'rest' matching ``params``."""
    def label(path, _):
        name = shd.path_name(path)
        return next((tower for tower, pattern in TOWER_RULES if re.search(pattern, name)),
                    "rest")

    return jax.tree_util.tree_map_with_path(label, params)


def tower_norms(tree, name: str) -> dict:
    """``{name/image, name/text, name/rest}``: the L2 norm of each group's leaves of ``tree``
    (params, or anything shaped like them: updates, gradients), in float32."""
    squares = {group: jnp.zeros((), jnp.float32) for group in TOWERS + ("rest",)}
    for leaf, group in zip(jax.tree.leaves(tree), jax.tree.leaves(tower_labels(tree))):
        squares[group] += jnp.sum(jnp.square(leaf.astype(jnp.float32)))
    return {f"{name}/{group}": jnp.sqrt(total) for group, total in squares.items()}


def tower_options(optimizer) -> tuple[dict[str, float], tuple[str, ...]]:
    """``optimizer.tower_lr`` ('text=1e-4,image=5e-4': a tower's peak learning rate) and
    ``optimizer.freeze`` ('image', 'text' or 'image,text'), parsed and checked:
    -> ({tower: peak rate}, frozen towers)."""
    def fail(message):
        raise ValueError(f"invalid config: {message}")

    def items(key):
        return [part.strip() for part in str(optimizer.get(key, "") or "").split(",")
                if part.strip()]

    rates = {}
    for item in items("tower_lr"):
        tower, sep, value = (part.strip() for part in item.partition("="))
        if not sep:
            fail(f"optimizer.tower_lr: {item!r} is not TOWER=RATE (e.g. "
                 f"--config.optimizer.tower_lr=text=1e-4,image=5e-4)")
        if tower not in TOWERS:
            fail(f"optimizer.tower_lr: unknown tower {tower!r}; the towers are {TOWERS} "
                 "(the region head and the temperature train at optimizer.learning_rate)")
        if tower in rates:
            fail(f"optimizer.tower_lr gives {tower!r} two rates")
        try:
            rates[tower] = float(value)
        except ValueError:
            fail(f"optimizer.tower_lr: {tower}={value!r} is not a number")
        if not (math.isfinite(rates[tower]) and rates[tower] > 0):
            fail(f"optimizer.tower_lr: {tower}={value} must be a positive number (to stop a "
                 f"tower training, use --config.optimizer.freeze={tower})")
    frozen = tuple(dict.fromkeys(items("freeze")))
    unknown = [t for t in frozen if t not in TOWERS]
    if unknown:
        fail(f"optimizer.freeze: unknown tower(s) {unknown}; choose from {TOWERS}, "
             "comma-separated")
    both = sorted(set(rates) & set(frozen))
    if both:
        fail(f"optimizer.tower_lr sets a rate for {both}, which optimizer.freeze freezes; "
             "drop one of the two")
    return rates, frozen


def make_optimizer(config) -> tuple[optax.GradientTransformation, Callable]:
    """AdamW with linear warmup, cosine decay and global-norm clipping -> (tx, learning_rates).

    With ``optimizer.tower_lr`` or ``optimizer.freeze`` the parameters are split into the
    groups of TOWER_RULES (``optax.partition``, formerly ``multi_transform``): each group follows
    the same warmup/cosine shape to its own peak rate; a frozen tower gets no update, no weight
    decay and no optimizer moments. ``learning_rates(step)`` gives the rates to log:
    'learning_rate' (optimizer.learning_rate's schedule) and, when towers are configured,
    'learning_rate/image' and 'learning_rate/text' (0 for a frozen tower).
    """
    o = config.optimizer
    rates, frozen = tower_options(o)

    def schedule(peak):
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=peak, warmup_steps=o.warmup_steps,
            decay_steps=max(config.total_steps, o.warmup_steps + 1),
            end_value=peak * o.end_learning_rate_factor)

    def decay_mask(params):  # no weight decay on biases, norms, embeddings' 1-D params, tau
        return jax.tree.map(lambda x: x.ndim >= 2, params)

    def adamw(peak):
        return optax.adamw(schedule(peak), b1=o.b1, b2=o.b2, weight_decay=o.weight_decay,
                           mask=decay_mask)

    clip = optax.clip_by_global_norm(o.grad_clip_norm)
    base = schedule(o.learning_rate)
    if not rates and not frozen:  # one group: a plain AdamW state (checkpoints stay compatible)
        return optax.chain(clip, adamw(o.learning_rate)), (
            lambda step: {"learning_rate": base(step)})
    peaks = {tower: rates.get(tower, o.learning_rate) for tower in TOWERS if tower not in frozen}
    groups = {tower: adamw(peak) for tower, peak in peaks.items()}
    groups.update({tower: optax.set_to_zero() for tower in frozen}, rest=adamw(o.learning_rate))
    schedules = {tower: schedule(peak) for tower, peak in peaks.items()}

    def learning_rates(step):
        logged = {"learning_rate": base(step)}
        for tower in TOWERS:
            logged[f"learning_rate/{tower}"] = (schedules[tower](step) if tower in schedules
                                                else jnp.zeros((), jnp.float32))
        return logged

    return optax.chain(clip, optax.partition(groups, tower_labels)), learning_rates


def frozen_towers(params, config):
    """``params`` with the towers of ``optimizer.freeze`` behind stop_gradient: no gradient is
    computed for them (and none counts in the clipping norm or grad_norm)."""
    _, frozen = tower_options(config.optimizer)
    if not frozen:
        return params
    return jax.tree.map(lambda p, tower: jax.lax.stop_gradient(p) if tower in frozen else p,
                        params, tower_labels(params))
