"""A minimal PyTorch (open_clip-style) reference of rmc_jax's model, objective and train step.

It exists to answer one question: is rmc_jax's jitted training step as fast as the same
model and loss written in plain PyTorch on the same machine? So it mirrors, layer for layer,
``rmc_jax.models.RegionCLIP`` and ``rmc_jax.objective.batch_losses`` / ``make_train_step``:

* image tower: ViT with a class token, learned position embeddings, pre-LN blocks (fused QKV,
  exact GELU MLP, LayerNorm eps 1e-6), final LayerNorm, CLS pooling; patch grid kept;
* text tower: token + learned position embeddings, pre-LN blocks with a key-padding mask,
  final LayerNorm, CLS (token 0) pooling;
* bias-free linear projections to the shared embedding, L2-normalised, and a learnable
  log inverse temperature clamped at ``max_inv_temperature``;
* region head (``roi``): RoIAlign-style bilinear pooling of the patch grid (``grid_sample`` at
  the aligned RoIAlign sample points; same cost profile, not bit-identical at the borders),
  mean over bins, LayerNorm -> x + GELU(Linear(x)), region projection;
* losses: symmetric InfoNCE (``global``); for ``roi`` also multi-positive region->caption
  InfoNCE, hard-negative caption loss, and RegionCLIP distillation from an EMA teacher that
  embeds 64 px region crops; captions and negatives encoded only for the packed real regions
  (``caption_fraction``);
* AdamW (no decay on 1-D params), global-norm clipping, warmup-cosine schedule, EMA teacher
  update, finiteness check.

Parameter counts equal rmc_jax's for the same dimensions (``tests/test_bench_reference.py``).

    from tools.torch_reference import make_step
    step, info = make_step(batch_size=32, image_size=128, variant="global")
    step()   # one training step on a fixed random batch
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

LN_EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class Dims:
    """Model and batch dimensions (defaults: ``configs/base.py:roi``)."""

    image_size: int = 128
    channels: int = 1
    patch_size: int = 16
    width: int = 192
    depth: int = 4
    num_heads: int = 3
    text_width: int = 192
    text_depth: int = 4
    text_heads: int = 3
    vocab_size: int = 4096
    max_len: int = 64
    mlp_ratio: float = 4.0
    embed_dim: int = 128
    roi_output_size: int = 4
    roi_sampling_ratio: int = 2
    text_len: int = 64          # report tokens
    caption_len: int = 12       # caption / negative / concept tokens
    regions: int = 4
    negatives: int = 3
    concepts: int = 24          # 8 findings x {plain, right, left}
    crop_size: int = 64         # teacher region crops
    caption_fraction: float = 0.5
    sentences: int = 2          # report sentences per example (the sentence term)
    sentence_len: int = 20
    report_sentences: int = 16  # sentence hashes listed per report


class Block(nn.Module):
    """Pre-LN transformer block: x + Attn(LN(x)); x + MLP(LN(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.heads = heads
        self.ln_attn = nn.LayerNorm(width, eps=LN_EPS)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.ln_mlp = nn.LayerNorm(width, eps=LN_EPS)
        hidden = int(width * mlp_ratio)
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x, key_mask=None):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln_attn(x)).view(b, t, 3, self.heads, d // self.heads).permute(
            2, 0, 3, 1, 4)                                              # 3 x [B, N, T, H]
        mask = None if key_mask is None else key_mask[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.out(y.transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.ln_mlp(x))))


class VisionTower(nn.Module):
    """images [B, C, H, W] -> (CLS [B, D], patch grid [B, D, h, w])."""

    def __init__(self, d: Dims):
        super().__init__()
        self.patch = d.patch_size
        self.patch_embed = nn.Conv2d(d.channels, d.width, d.patch_size, d.patch_size)
        n = (d.image_size // d.patch_size) ** 2
        self.cls_token = nn.Parameter(torch.randn(1, 1, d.width) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, n + 1, d.width) * 0.02)
        self.grid = d.image_size // d.patch_size
        self.blocks = nn.ModuleList(Block(d.width, d.num_heads, d.mlp_ratio)
                                    for _ in range(d.depth))
        self.norm = nn.LayerNorm(d.width, eps=LN_EPS)

    def forward(self, images):
        x = self.patch_embed(images)                                    # [B, D, h, w]
        b, d, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)
        pos = self.pos_embed
        if h != self.grid or w != self.grid:  # teacher crops: resize the position table
            table = pos[0, 1:].reshape(1, self.grid, self.grid, d).permute(0, 3, 1, 2)
            table = F.interpolate(table, (h, w), mode="bilinear", align_corners=False)
            pos = torch.cat([pos[:, :1], table.flatten(2).transpose(1, 2)], 1)
        x = torch.cat([self.cls_token.expand(b, -1, -1), x], 1) + pos
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return x[:, 0], x[:, 1:].transpose(1, 2).reshape(b, d, h, w)


class TextTower(nn.Module):
    """tokens [N, L], mask [N, L] -> CLS-pooled [N, D]."""

    def __init__(self, d: Dims):
        super().__init__()
        self.token_embed = nn.Embedding(d.vocab_size, d.text_width)
        self.pos_embed = nn.Parameter(torch.randn(d.max_len, d.text_width) * 0.02)
        self.blocks = nn.ModuleList(Block(d.text_width, d.text_heads, d.mlp_ratio)
                                    for _ in range(d.text_depth))
        self.norm = nn.LayerNorm(d.text_width, eps=LN_EPS)

    def forward(self, tokens, mask):
        x = self.token_embed(tokens) + self.pos_embed[: tokens.shape[1]]
        key_mask = mask.bool()
        for block in self.blocks:
            x = block(x, key_mask)
        return self.norm(x)[:, 0]


class RegionCLIP(nn.Module):
    """Two towers, region head, projections and temperature (``rmc_jax.models.RegionCLIP``)."""

    def __init__(self, d: Dims, max_inv_temperature: float = 100.0,
                 init_temperature: float = 0.07):
        super().__init__()
        self.d = d
        self.image_encoder = VisionTower(d)
        self.text_encoder = TextTower(d)
        self.region_norm = nn.LayerNorm(d.width, eps=LN_EPS)
        self.region_fc = nn.Linear(d.width, d.width)
        self.image_proj = nn.Linear(d.width, d.embed_dim, bias=False)
        self.region_proj = nn.Linear(d.width, d.embed_dim, bias=False)
        self.text_proj = nn.Linear(d.text_width, d.embed_dim, bias=False)
        self.log_inv_temperature = nn.Parameter(torch.tensor(math.log(1 / init_temperature)))
        self.max_log = math.log(max_inv_temperature)

    def temperature(self):
        return 1.0 / torch.exp(torch.clamp(self.log_inv_temperature, max=self.max_log))

    def image_features(self, images):
        cls, grid = self.image_encoder(images)
        return F.normalize(self.image_proj(cls).float(), dim=-1, eps=1e-6), grid

    def encode_image(self, images):
        return self.image_features(images)[0]

    def encode_text(self, tokens, mask):
        return F.normalize(self.text_proj(self.text_encoder(tokens, mask)).float(), dim=-1,
                           eps=1e-6)

    def regions_from_patches(self, grid, boxes, box_mask):
        """grid [B, D, h, w], boxes [B, R, 4] normalised xyxy -> [B, R, E] (0 where masked)."""
        full = boxes.new_tensor([0.0, 0.0, 1.0, 1.0])
        boxes = torch.where(box_mask[..., None], boxes, full)
        points = roi_sample_points(boxes, self.d.roi_output_size * self.d.roi_sampling_ratio)
        b, r, s = points.shape[:3]
        pooled = F.grid_sample(grid.float(), points.reshape(b, r * s, s, 2), mode="bilinear",
                               padding_mode="border", align_corners=False)   # [B, D, R*s, s]
        feats = pooled.reshape(b, -1, r, s * s).mean(-1).transpose(1, 2)      # [B, R, D]
        x = self.region_norm(feats)
        x = x + F.gelu(self.region_fc(x))
        emb = F.normalize(self.region_proj(x).float(), dim=-1, eps=1e-6)
        return torch.where(box_mask[..., None], emb, torch.zeros_like(emb))


def roi_sample_points(boxes, samples: int):
    """[B, R, 4] normalised xyxy -> grid_sample coordinates [B, R, s, s, 2] of the s x s
    sample points of aligned RoIAlign (``grid_sample`` with align_corners=False maps a
    normalised image coordinate u in [0, 1] to 2u - 1)."""
    steps = (torch.arange(samples, dtype=boxes.dtype, device=boxes.device) + 0.5) / samples
    x0, y0, x1, y1 = boxes.unbind(-1)
    xs = x0[..., None] + (x1 - x0)[..., None] * steps                   # [B, R, s]
    ys = y0[..., None] + (y1 - y0)[..., None] * steps
    gx = xs[..., None, :].expand(*xs.shape[:-1], samples, samples)
    gy = ys[..., :, None].expand(*ys.shape[:-1], samples, samples)
    return torch.stack([gx, gy], -1) * 2 - 1


# ---------------------------------------------------------------------------------------------
# Losses (rmc_jax.losses, dense backend)
# ---------------------------------------------------------------------------------------------


def global_loss(img, txt, tau):
    logits = img @ txt.T / tau
    target = torch.arange(len(img), device=img.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def _masked_lse(logits, mask, dim):
    return torch.logsumexp(logits.masked_fill(~mask, -1e30), dim)


def roi_loss(roi, cap, mask, ids, tau):
    """Multi-positive region -> caption InfoNCE over the valid regions of the batch."""
    e = roi.shape[-1]
    anchors, candidates = roi.reshape(-1, e), cap.reshape(-1, e)
    valid, ids = mask.reshape(-1), ids.reshape(-1)
    logits = anchors @ candidates.T / tau
    positive = (ids[:, None] == ids[None, :]) & valid[None, :]
    rows = _masked_lse(logits, valid[None, :].expand_as(logits), 1) - _masked_lse(
        logits, positive, 1)
    return (rows * valid).sum() / valid.sum().clamp(min=1)


def sentence_loss(img, sent, ids, image_ids, tau):
    """Sentence -> image InfoNCE; positives: every image that lists the sentence's id or drew
    it (``rmc_jax.losses.sentence_image_loss``)."""
    b, s, e = sent.shape
    stated = torch.cat([image_ids, ids], 1)                                  # [B, M + S]
    anchors, ids = sent.reshape(b * s, e), ids.reshape(-1)
    logits = anchors @ img.T / tau                                           # [B*S, B]
    positive = (ids[:, None, None] == stated[None]).any(-1)
    rows = torch.logsumexp(logits, 1) - _masked_lse(logits, positive, 1)
    valid = ids >= 0
    return (rows * valid).sum() / valid.sum().clamp(min=1)


def negative_loss(roi, cap, neg, mask, neg_valid, tau):
    pos = (roi * cap).sum(-1)
    negs = torch.einsum("bre,brke->brk", roi, neg)
    logits = torch.cat([pos[..., None], negs], -1) / tau
    keep = torch.cat([torch.ones_like(neg_valid[..., :1]), neg_valid], -1)
    rows = _masked_lse(logits, keep, -1) - logits[..., 0]
    return (rows * mask).sum() / mask.sum().clamp(min=1)


def distill_loss(student, teacher, mask, t_student=0.01, t_teacher=0.01):
    log_pt = F.log_softmax(teacher / t_teacher, -1)
    log_ps = F.log_softmax(student / t_student, -1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(-1)
    return (kl * mask).sum() / mask.sum().clamp(min=1)


def crop_regions(images, boxes, size: int):
    """Crop-and-resize (bilinear) every box: images [B, C, H, W] -> [B*R, C, size, size]."""
    b, r = boxes.shape[:2]
    points = roi_sample_points(boxes, size).reshape(b, r * size, size, 2)
    crops = F.grid_sample(images, points, mode="bilinear", padding_mode="border",
                          align_corners=False)                               # [B, C, R*s, s]
    return crops.reshape(b, -1, r, size, size).transpose(1, 2).reshape(b * r, -1, size, size)


# ---------------------------------------------------------------------------------------------
# The train step
# ---------------------------------------------------------------------------------------------


def random_batch(d: Dims, batch_size: int, seed: int = 0) -> dict:
    """A fixed batch with the shapes and masks of ``rmc_jax.data.pipeline`` batches: 1 to 3
    real regions per image (about half of the B x R slots, as in the synthetic data)."""
    g = torch.Generator().manual_seed(seed)
    b, r, k = batch_size, d.regions, d.negatives
    count = torch.randint(1, 4, (b,), generator=g)
    box_mask = torch.arange(r)[None, :] < count[:, None]
    xy = torch.rand(b, r, 2, generator=g) * 0.6
    wh = 0.1 + torch.rand(b, r, 2, generator=g) * 0.3
    return {
        "image": torch.randn(b, d.channels, d.image_size, d.image_size, generator=g),
        "boxes": torch.cat([xy, xy + wh], -1),
        "box_mask": box_mask,
        "text_ids": torch.randint(5, d.vocab_size, (b, d.text_len), generator=g),
        "text_mask": torch.ones(b, d.text_len, dtype=torch.int32),
        "caption_ids": torch.randint(5, d.vocab_size, (b, r, 1 + k, d.caption_len), generator=g),
        "caption_mask": torch.ones(b, r, 1 + k, d.caption_len, dtype=torch.int32),
        "neg_valid": box_mask[..., None].expand(b, r, k).clone(),
        "caption_hash": torch.randint(0, 1 << 30, (b, r), generator=g),
        "sentence_ids": torch.randint(5, d.vocab_size, (b, d.sentences, d.sentence_len),
                                      generator=g),
        "sentence_mask": torch.ones(b, d.sentences, d.sentence_len, dtype=torch.int32),
        "sentence_hash": torch.randint(0, 40, (b, d.sentences), generator=g),
        "report_sentence_hash": torch.randint(-1, 40, (b, d.report_sentences), generator=g),
        "concepts": torch.randint(5, d.vocab_size, (d.concepts, d.caption_len), generator=g),
        "concept_mask": torch.ones(d.concepts, d.caption_len, dtype=torch.int32),
    }


def batch_losses(model, teacher, batch, d: Dims, variant: str):
    """Total loss of one batch (``rmc_jax.objective.batch_losses`` for 'global' / 'roi')."""
    tau = model.temperature()
    image_emb, grid = model.image_features(batch["image"])
    report_emb = model.encode_text(batch["text_ids"], batch["text_mask"])
    total = global_loss(image_emb, report_emb, tau)
    if variant == "global":
        return total
    b, r = batch["box_mask"].shape
    sentences = model.encode_text(batch["sentence_ids"].reshape(-1, d.sentence_len),
                                  batch["sentence_mask"].reshape(-1, d.sentence_len))
    total = total + sentence_loss(image_emb, sentences.reshape(b, d.sentences, -1),
                                  batch["sentence_hash"], batch["report_sentence_hash"], tau)
    budget = math.ceil(b * r * d.caption_fraction)
    flat = batch["box_mask"].reshape(-1)
    kept = flat & (torch.cumsum(flat, 0) <= budget)
    box_mask = kept.reshape(b, r)
    slots = torch.nonzero(kept).squeeze(1)
    region_emb = model.regions_from_patches(grid, batch["boxes"], box_mask)
    tokens = batch["caption_ids"].reshape(b * r, -1, d.caption_len)[slots]
    masks = batch["caption_mask"].reshape(b * r, -1, d.caption_len)[slots]
    emb = model.encode_text(tokens.reshape(-1, d.caption_len), masks.reshape(-1, d.caption_len))
    text = emb.new_zeros(b * r, 1 + d.negatives, emb.shape[-1])
    text[slots] = emb.reshape(len(slots), 1 + d.negatives, -1)
    text = text.reshape(b, r, 1 + d.negatives, -1)
    caption_emb, negative_emb = text[:, :, 0], text[:, :, 1:]
    total = total + roi_loss(region_emb, caption_emb, box_mask, batch["caption_hash"], tau)
    total = total + negative_loss(region_emb, caption_emb, negative_emb, box_mask,
                                  batch["neg_valid"], tau)
    concept_emb = model.encode_text(batch["concepts"], batch["concept_mask"])
    student = torch.einsum("bre,te->brt", region_emb, concept_emb)
    with torch.no_grad():
        crops = crop_regions(batch["image"], batch["boxes"], d.crop_size)
        crop_emb = teacher.encode_image(crops).reshape(b, r, -1)
        teacher_logits = torch.einsum("bre,te->brt", crop_emb, teacher.encode_text(
            batch["concepts"], batch["concept_mask"]))
        keep = box_mask & (F.softmax(teacher_logits / 0.01, -1).amax(-1) > 0.1)
    return total + 0.5 * distill_loss(student, teacher_logits, keep)


def make_model(d: Dims) -> RegionCLIP:
    torch.manual_seed(0)
    return RegionCLIP(d)


def make_step(batch_size: int = 32, image_size: int = 128, *, variant: str = "global",
              precision: str = "float32", compile: bool = False, dims: Dims | None = None,
              total_steps: int = 400, seed: int = 0):
    """One training step on a fixed random batch -> (step(), info dict).

    ``precision``: 'float32', or 'bfloat16' (autocast: bf16 matmuls with f32 accumulation,
    f32 parameters and optimiser state, as ``dtype='bfloat16'`` in rmc_jax). ``compile``
    wraps the forward+loss in ``torch.compile`` (inductor). ``variant``: 'global' or 'roi'.
    """
    if variant not in ("global", "roi"):
        raise ValueError(f"variant={variant!r}; expected 'global' or 'roi'")
    d = dims or Dims(image_size=image_size)
    model = make_model(d)
    teacher = copy.deepcopy(model).requires_grad_(False) if variant == "roi" else None
    batch = random_batch(d, batch_size, seed)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=5e-4, betas=(0.9, 0.98), eps=1e-8, foreach=True)
    warmup = 40
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: (
        s / warmup if s < warmup else
        0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, (s - warmup) /
                                                         max(1, total_steps - warmup))))))
    loss_fn = lambda: batch_losses(model, teacher, batch, d, variant)  # noqa: E731
    if compile:
        loss_fn = torch.compile(loss_fn)
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bfloat16"
                else contextlib.nullcontext())
    params = list(model.parameters())
    teacher_params = list(teacher.parameters()) if teacher is not None else []

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = loss_fn()
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        if torch.isfinite(loss) and torch.isfinite(norm):
            optimizer.step()
            schedule.step()
            if teacher_params:
                with torch.no_grad():
                    torch._foreach_mul_(teacher_params, 0.99)
                    torch._foreach_add_(teacher_params, params, alpha=0.01)
        return float(loss.detach())

    info = {"parameters": sum(p.numel() for p in params), "dims": dataclasses.asdict(d)}
    return step, info


def parameter_count(d: Dims) -> int:
    return sum(p.numel() for p in make_model(d).parameters())
