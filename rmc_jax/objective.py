"""The training objective: every loss term of one batch (``batch_losses``) and the
distillation teacher's scores it is given (``region_teacher``).

Shapes: B batch, R regions, K negatives, T concepts, E embedding width.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from rmc_jax import losses, pretrained
from rmc_jax import sharding as shd
from rmc_jax.data.schema import is_no_finding
from rmc_jax.models import EMBEDDING_NORMS, RegionCLIP, roi_align

__all__ = ["GLOBAL_LOSSES", "GLOBAL_POSITIVES", "LOSS_TERMS", "TEACHER_REGIONS", "TEACHER_SOURCES",
           "batch_losses", "caption_budget", "encode_packed", "global_pair_ids",
           "no_finding_column", "region_slots", "region_teacher", "teacher_head_scores",
           "teacher_regions", "teacher_scores"]

LOSS_TERMS = ("global", "sentence", "roi", "neg", "distill")
TEACHER_SOURCES = ("ema", "checkpoint", "hf", "none")
# How the teacher embeds a region: 'crop' (RegionCLIP: its image tower on the cropped box),
# 'head' (an rmc_jax teacher's own region head on its patch grid, as the student does) or
# 'auto' (teacher_regions: 'crop' for a pretrained CLIP, 'head' for an rmc_jax teacher).
TEACHER_REGIONS = ("auto", "crop", "head")
# 'clip': symmetric InfoNCE (losses.global_contrastive_loss); 'medclip': MedCLIP's soft targets
# from label overlap (losses.medclip_contrastive_loss); 'siglip': SigLIP's pairwise sigmoid
# loss with the model's learnt logit bias (losses.sigmoid_contrastive_loss).
GLOBAL_LOSSES = ("clip", "medclip", "siglip")
# What the 'clip' and 'siglip' global losses count as an image's report: 'pair' (its own report
# only, CLIP) or 'normal' (also the other normal studies' reports in the batch, global_pair_ids).
GLOBAL_POSITIVES = ("pair", "normal")


def _contrastive(mesh, config, fn, *args, scalars: int = 1):
    """Run a contrastive loss ``fn(*arrays, *scalars, **backend)`` over the global batch: the
    sharded backend inside shard_map on a multi-device mesh, dense or tiled on one device.
    Every array argument is split over the batch axis; the last ``scalars`` arguments (the
    temperature, and the bias of the sigmoid loss) are replicated."""
    chunk = config.loss.chunk_size or None
    if mesh.shape[shd.BATCH_AXIS] == 1:
        return fn(*args, chunk_size=chunk)
    local = functools.partial(fn, axis_name=shd.BATCH_AXIS, backend=config.loss.backend,
                              chunk_size=chunk)
    specs = (P(shd.BATCH_AXIS),) * (len(args) - scalars) + (P(),) * scalars
    return jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=P(),
                         axis_names={shd.BATCH_AXIS})(*args)


def _global_loss(images, reports, has_report, ids, temperature, **backend):
    return losses.global_contrastive_loss(images, reports, temperature, pair_mask=has_report,
                                          pair_ids=ids, **backend)


def _sigmoid_loss(images, reports, has_report, ids, temperature, bias, **backend):
    return losses.sigmoid_contrastive_loss(images, reports, temperature, bias,
                                           pair_mask=has_report, pair_ids=ids, **backend)


def no_finding_column(label_names) -> int | None:
    """The index of the 'No Finding' class among ``label_names`` (any spelling), or None."""
    return next((i for i, name in enumerate(label_names) if is_no_finding(name)), None)


def global_pair_ids(labels, label_mask, no_finding: int | None):
    """[B] ids of the global loss's image-report pairs: one id (-1) shared by the batch's normal
    studies, whose reports say the same in other words (CLIP would push them apart as
    negatives), the others their own (0..B-1).

    A study is normal when its 'No Finding' label (column ``no_finding``) is known and positive,
    or, for label sets without that class (``no_finding`` None), when every label is known and
    negative; with no label classes at all no study is.

    Args:
      labels: [B, C] float, 1 = present; label_mask: [B, C] bool, False = unknown.
    """
    b, c = labels.shape
    if no_finding is not None:
        normal = label_mask[:, no_finding] & (labels[:, no_finding] > 0.5)
    elif c:
        normal = jnp.all(label_mask & (labels < 0.5), axis=1)
    else:
        normal = jnp.zeros((b,), bool)
    return jnp.where(normal, -1, jnp.arange(b, dtype=jnp.int32))


def _masked_mean(values, mask):
    """The mean of ``values`` where ``mask`` is true (0 where it is nowhere)."""
    return jnp.sum(jnp.where(mask, values, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


def _roi_loss(regions, captions, mask, ids, temperature, **backend):
    return losses.roi_contrastive_loss(regions, captions, mask, temperature, caption_ids=ids,
                                       **backend)


def batch_losses(params, teacher_logits, batch, concepts, step, *, model, config, mesh,
                 no_finding: int | None):
    """All loss terms for one batch -> (total, logs). Shapes: B batch, R regions, K negatives,
    T concepts. ``teacher_logits`` [B, R, T]: the teacher's scores of the regions against the
    ``concepts`` (``region_teacher``), or None (no distillation term). ``no_finding``: the
    'No Finding' column of the labels (``no_finding_column``; None where the label set has
    none), for ``loss.global_positives='normal'``."""
    apply = functools.partial(model.apply, {"params": params})

    def measured(*args, method):  # embeddings, and their norms before normalisation
        out, sown = apply(*args, method=method, mutable=[EMBEDDING_NORMS])
        return out, sown[EMBEDDING_NORMS]

    images, boxes, box_mask = batch["image"], batch["boxes"], batch["box_mask"]
    b, r = box_mask.shape
    tau = apply(method=RegionCLIP.temperature)

    slots, box_mask = region_slots(box_mask, caption_budget(b * r, config, mesh))
    (image_emb, grid), image_norms = measured(images, method=RegionCLIP.image_features)
    report_emb, report_norms = measured(batch["text_ids"], batch["text_mask"],
                                        method=RegionCLIP.encode_text)
    logs = {"embedding_norm/image": image_norms["image"][0].mean(),
            "embedding_norm/text": _masked_mean(report_norms["text"][0], batch["has_report"])}
    terms = {}
    if config.loss.global_loss == "medclip":
        # MedCLIP's soft targets from label overlap; the report's labels are its image's. Dense
        # on the global batch (XLA partitions it on a multi-device mesh), as in MedCLIP.
        labels = losses.medclip_labels(batch["labels"], batch["label_mask"])
        terms["global"] = losses.medclip_contrastive_loss(image_emb, report_emb, labels, labels,
                                                          tau)
    else:
        # An image without report text has no report to match: it sits out the global loss.
        ids = jnp.arange(b, dtype=jnp.int32)
        if config.loss.global_positives == "normal":
            ids = global_pair_ids(batch["labels"], batch["label_mask"], no_finding)
        if config.loss.global_loss == "siglip":
            bias = apply(method=RegionCLIP.logit_bias)
            terms["global"] = _contrastive(mesh, config, _sigmoid_loss, image_emb, report_emb,
                                           batch["has_report"], ids, tau, bias, scalars=2)
            logs["logit_bias"] = bias
        else:
            terms["global"] = _contrastive(mesh, config, _global_loss, image_emb, report_emb,
                                           batch["has_report"], ids, tau)

    if config.loss.sentence_weight > 0:
        # Report sentences one at a time against the batch's images (their reports' sentence
        # hashes say which images state each).
        _, s, length = batch["sentence_ids"].shape
        sentence_emb = apply(batch["sentence_ids"].reshape(b * s, length),
                             batch["sentence_mask"].reshape(b * s, length),
                             method=RegionCLIP.encode_text).reshape(b, s, -1)
        terms["sentence"] = _contrastive(mesh, config, losses.sentence_image_loss, image_emb,
                                         sentence_emb, batch["sentence_hash"],
                                         batch["report_sentence_hash"], tau)

    uses_regions = any(config.loss[f"{t}_weight"] > 0 for t in ("roi", "neg", "distill"))
    if uses_regions:
        region_emb, region_norms = measured(grid, boxes, box_mask,
                                            method=RegionCLIP.regions_from_patches)
        logs["embedding_norm/regions"] = _masked_mean(region_norms["regions"][0], box_mask)
    if config.loss.roi_weight > 0 or config.loss.neg_weight > 0:
        # Captions and their hard negatives go through the text tower in one call, for the
        # packed real regions only (most of the R slots of an example are padding).
        tokens = jnp.concatenate([batch["caption_ids"][:, :, None], batch["neg_ids"]], axis=2)
        masks = jnp.concatenate([batch["caption_mask"][:, :, None], batch["neg_mask"]], axis=2)
        text = encode_packed(apply, tokens, masks, slots)
        caption_emb, negative_emb = text[:, :, 0], text[:, :, 1:]
    if config.loss.roi_weight > 0:
        # Equal caption texts are positives together; otherwise every region is its own class.
        ids = (batch["caption_hash"] if config.loss.multi_positive_captions
               else jnp.arange(b * r, dtype=jnp.int32).reshape(b, r))
        terms["roi"] = _contrastive(mesh, config, _roi_loss, region_emb, caption_emb, box_mask,
                                    ids, tau)
    if config.loss.neg_weight > 0:
        terms["neg"] = losses.negative_caption_loss(region_emb, caption_emb, negative_emb,
                                                    box_mask, batch["neg_valid"], tau)
    if config.loss.distill_weight > 0 and teacher_logits is not None:
        concept_emb = apply(*concepts, method=RegionCLIP.encode_text)              # [T, E]
        if config.teacher.get("fixed_concepts", False):
            # RegionCLIP scores regions against concept embeddings of a fixed text encoder:
            # distillation then trains the region pathway only, never the concept texts
            # (which are also the zero-shot prompts' words).
            concept_emb = jax.lax.stop_gradient(concept_emb)
        student_logits = jnp.einsum("bre,te->brt", region_emb, concept_emb)
        probs = jax.nn.softmax(teacher_logits / config.teacher.temperature, axis=-1)
        keep = box_mask & (probs.max(-1) > config.teacher.threshold)
        active = step >= config.teacher.warmup_steps
        terms["distill"] = losses.distillation_loss(
            student_logits, teacher_logits, keep & active,
            student_temperature=config.teacher.student_temperature,
            teacher_temperature=config.teacher.temperature)
        logs["distill_kept"] = (keep & active).sum() / jnp.maximum(box_mask.sum(), 1)
    logs["regions_over_budget"] = batch["box_mask"].sum() - box_mask.sum()
    weights = {t: config.loss[f"{t}_weight"] for t in LOSS_TERMS}
    total, term_logs = losses.total_loss(terms, weights)
    logs.update(term_logs)
    logs["temperature"] = tau
    return total, logs


def caption_budget(slots: int, config, mesh) -> int:
    """How many region captions one step encodes: ``loss.caption_fraction`` of the B x R
    slots, rounded up to a multiple of the data-parallel devices."""
    devices = mesh.shape[shd.BATCH_AXIS]
    budget = math.ceil(slots * config.loss.caption_fraction)
    return min(slots, -(-budget // devices) * devices) if budget < slots else slots


def region_slots(box_mask, budget: int):
    """Flat indices [budget] of the first ``budget`` real regions (padding: B*R, out of range)
    and the mask of the regions that got a slot (the rest sit out this step's region losses)."""
    flat = box_mask.reshape(-1)
    kept = flat & (jnp.cumsum(flat) <= budget)
    (index,) = jnp.nonzero(kept, size=budget, fill_value=flat.size)
    return index, kept.reshape(box_mask.shape)


def encode_packed(apply, tokens, masks, slots):
    """Text embeddings [B, R, T, E] of tokens [B, R, T, L], computed only at ``slots``; the
    other positions are zeros (their regions are masked out of every loss)."""
    b, r, t, length = tokens.shape
    # 'clip' repeats a real row into the padding slots (no all-masked sequence, no NaN);
    # those rows are dropped again by the scatter below.
    packed_tokens = jnp.take(tokens.reshape(b * r, t, length), slots, axis=0, mode="clip")
    packed_masks = jnp.take(masks.reshape(b * r, t, length), slots, axis=0, mode="clip")
    emb = apply(packed_tokens.reshape(-1, length), packed_masks.reshape(-1, length),
                method=RegionCLIP.encode_text).reshape(len(slots), t, -1)
    out = jnp.zeros((b * r, t, emb.shape[-1]), emb.dtype).at[slots].set(emb, mode="drop")
    return out.reshape(b, r, t, -1)


def region_teacher(config, model) -> Callable | None:
    """The distillation teacher, chosen once from ``teacher.source`` and ``teacher.regions``: a
    function ``(teacher, images, boxes, concepts) -> logits [B, R, T]`` (no gradient) that
    scores each region against the concept set, or None when nothing is distilled.

    ``teacher`` is what the train step holds for it: the EMA params ('ema'), a finished run's
    params ('checkpoint'), or a pretrained CLIP's ``{'params', 'concepts'}`` ('hf'), which
    scores crops at its own image size against the concepts encoded by its own tokenizer.
    A region is the teacher's image tower on the cropped box (``regions='crop'``, RegionCLIP;
    the only way for an image-level CLIP) or, for an rmc_jax teacher, its own region head on
    its patch grid (``regions='head'``, ``teacher_head_scores``); ``teacher_regions`` resolves
    'auto'.
    """
    if config.loss.distill_weight <= 0 or config.teacher.source == "none":
        return None
    if teacher_regions(config) == "head":
        return functools.partial(teacher_head_scores, model=model)
    if config.teacher.source == "hf":
        clip, crop_size = pretrained.teacher_model(config), pretrained.teacher_crop_size(config)

        def pretrained_clip(teacher, images, boxes, concepts):
            del concepts  # encoded by the teacher's tokenizer, in ``teacher``
            return teacher_scores(teacher["params"], images, boxes, teacher["concepts"],
                                  model=clip, crop_size=crop_size)

        return pretrained_clip
    return functools.partial(teacher_scores, model=model, crop_size=config.teacher.crop_size)


def teacher_scores(teacher_params, images, boxes, concepts, *, model, crop_size):
    """RegionCLIP teacher: each region is cropped from the image (RoIAlign as crop-and-resize),
    embedded by the teacher's image tower, and scored against the concept set.
    Returns cosine similarities [B, R, T] with no gradient."""
    teacher_params = jax.lax.stop_gradient(teacher_params)
    apply = functools.partial(model.apply, {"params": teacher_params})
    b, r = boxes.shape[:2]
    crop = functools.partial(roi_align, output_size=crop_size, sampling_ratio=2, aligned=True)
    crops = jax.vmap(crop)(images, boxes)                              # [B, R, c, c, C]
    crop_emb = apply(crops.reshape(b * r, crop_size, crop_size, images.shape[-1]),
                     method=RegionCLIP.encode_image).reshape(b, r, -1)
    concept_emb = apply(*concepts, method=RegionCLIP.encode_text)
    return jax.lax.stop_gradient(jnp.einsum("bre,te->brt", crop_emb, concept_emb))


def teacher_regions(config) -> str:
    """``teacher.regions`` resolved: 'auto' is 'crop' for a pretrained CLIP teacher (it has no
    region head) and 'head' for an rmc_jax teacher ('ema', 'checkpoint'), whose image tower
    reads a crop poorly when it has learnt from whole images (measured in experiments/README.md)."""
    regions = config.teacher.get("regions", "auto")
    if regions == "auto":
        return "crop" if config.teacher.source == "hf" else "head"
    return regions


def teacher_head_scores(teacher_params, images, boxes, concepts, *, model):
    """An rmc_jax teacher's region head: RoIAlign on the teacher's own patch grid, scored against
    the concept set, the way the student embeds regions (a mean teacher when the params are the
    EMA). Unlike a crop, the region keeps its context and position. Returns cosine
    similarities [B, R, T] with no gradient; padding slots score like any box (the loss masks
    them)."""
    teacher_params = jax.lax.stop_gradient(teacher_params)
    apply = functools.partial(model.apply, {"params": teacher_params})
    every_slot = jnp.ones(boxes.shape[:2], bool)
    region_emb = apply(images, boxes, every_slot, method=RegionCLIP.encode_regions)
    concept_emb = apply(*concepts, method=RegionCLIP.encode_text)
    return jax.lax.stop_gradient(jnp.einsum("bre,te->brt", region_emb, concept_emb))
