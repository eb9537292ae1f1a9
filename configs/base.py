"""Training configurations: ``--config=configs/base.py:VARIANT[,key=value,...]``.

Variants:
  roi           full objective: global + ROI + negative-caption + distillation (1 / 1 / 1 / 0.5)
  global        CLIP baseline: global image-report loss only
  medclip       MedCLIP baseline: MedCLIP's own soft-target global loss (label overlap)
  roi_nodistill ablation: roi without the distillation term
  roi_noneg     ablation: roi without the negative-caption term
  smoke         seconds: a tiny model for tests

Arguments after the variant override common knobs, e.g. ``roi,steps=200,batch=32,res=128``
(also ``seed``, ``lr``, ``augment`` (true/false) and ``dtype`` for both towers' compute:
``auto``, the default, is bfloat16 on GPUs, TPUs and CPUs with bf16 units and float32
elsewhere; ``float32`` reproduces results exactly across machines); any key can also be set on
the command line:
``--config.optimizer.learning_rate=3e-4``.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from rmc_jax.models.config import ModelConfig, TextConfig, VisionConfig

VARIANTS = ("roi", "global", "medclip", "roi_nodistill", "roi_noneg", "smoke")

# Short names accepted after the variant -> (config paths it sets, type).
_ARGUMENTS = {
    "steps": (("total_steps",), int),
    "batch": (("batch_size",), int),
    "res": (("data.image_size",), int),
    "seed": (("seed",), int),
    "lr": (("optimizer.learning_rate",), float),
    # Compute dtype of both towers: 'bfloat16' runs the matmuls in bf16 with float32
    # accumulation (parameters, optimizer and losses stay float32); about 1.9x the float32
    # step on CPUs with AVX512-BF16/AMX (BENCHMARKS.md), and the usual choice on GPU/TPU.
    # 'auto' (the default) picks it where it is the faster one, float32 elsewhere.
    "dtype": (("model.vision.dtype", "model.text.dtype"), str),
    "augment": (("data.augment",), "boolean"),
}

BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def parse_arg(arg: str) -> tuple[str, dict]:
    """'roi,steps=10,res=64' -> ('roi', {'total_steps': 10, 'data.image_size': 64})."""
    variant, *pairs = [part.strip() for part in (arg or "roi").split(",") if part.strip()]
    if variant not in VARIANTS:
        raise ValueError(f"unknown config variant {variant!r}; choose one of {VARIANTS}")
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in _ARGUMENTS:
            raise ValueError(f"config argument {pair!r} is not KEY=VALUE with KEY in "
                             f"{sorted(_ARGUMENTS)}")
        paths, kind = _ARGUMENTS[key]
        if kind == "boolean":
            if value.lower() not in BOOLEANS:
                raise ValueError(f"config argument {pair!r}: {key} is true or false")
            value, kind = BOOLEANS[value.lower()], bool
        overrides.update({path: kind(value) for path in paths})
    return variant, overrides


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant, overrides = parse_arg(arg or "roi")
    c = ml_collections.ConfigDict()
    c.variant = variant
    c.seed = 0
    # About 11 minutes with the text warm start and evaluation on a 2-core CPU with AMX (16 to 21
    # on one with AVX512-BF16 alone; dtype 'auto' is bfloat16 on both); a CPU without bf16 units
    # runs float32 at about a third of the AMX speed: ``steps=400`` there for about 10 minutes.
    c.total_steps = 1400
    c.batch_size = 32               # global batch, split over processes and devices
    c.log_every = 50
    c.progress_bar = "auto"         # 'auto' (when stdout is a terminal), 'on' or 'off'
    c.checkpoint_every = 200
    c.keep_checkpoints = 2
    c.eval_every = 0                # 0 = only at the end
    c.on_nonfinite = "stop"         # 'stop' or 'skip' the step

    c.optimizer = ml_collections.ConfigDict(dict(
        learning_rate=5e-4, warmup_steps=40, end_learning_rate_factor=0.02, weight_decay=0.05,
        b1=0.9, b2=0.98, grad_clip_norm=1.0,
        # Per tower (optim.TOWER_RULES: 'image' = image encoder + image projection, 'text' = text
        # encoder + text projection; the region head and temperature keep learning_rate):
        tower_lr="",                # peak rates, same warmup/cosine shape: 'text=1e-4,image=5e-4'
        freeze=""))                 # locked towers (LiT): 'image', 'text' or 'image,text'

    # Masked-language-model warm start of the text tower on the training reports
    # before the contrastive stage (rmc_jax.text_pretrain; cached in <workdir>/text_pretrain;
    # about a minute; every variant starts from it, the baselines too; 0 = from scratch).
    c.text_pretrain = ml_collections.ConfigDict(dict(
        steps=300, batch_size=64, learning_rate=1e-3, warmup_steps=20, weight_decay=0.01,
        mask_probability=0.15, corpus_size=4000))

    c.loss = ml_collections.ConfigDict(dict(
        global_weight=1.0, roi_weight=1.0, neg_weight=1.0, distill_weight=0.5,
        # Report sentences one at a time against the batch's images (losses.sentence_image_loss;
        # data.sentences_per_report of them per example); 0 for the CLIP and MedCLIP baselines.
        sentence_weight=1.0,
        global_loss="clip",         # 'clip' (InfoNCE), 'medclip' (MedCLIP's soft targets from
                                    # label overlap, losses.medclip_contrastive_loss) or
                                    # 'siglip' (pairwise sigmoid with a learnt logit bias,
                                    # losses.sigmoid_contrastive_loss; model.init_logit_bias)
        # 'normal': the 'clip' and 'siglip' losses count every normal study's report in the batch
        # as a positive of every normal image (objective.global_pair_ids: the reports say the
        # same in other words; CLIP pushes them apart); 'pair': its own report only (CLIP).
        global_positives="normal",
        backend="gather",           # 'gather' or 'ring' for the sharded contrastive losses
        chunk_size=0,               # >0: tiled contrastive losses (memory linear in batch)
        multi_positive_captions=True,
        caption_fraction=0.5))      # captions encoded per step, as a fraction of B x R slots

    c.teacher = ml_collections.ConfigDict(dict(
        source="ema",               # 'ema', 'checkpoint' (a frozen rmc_jax run), 'hf' (a
                                    # pretrained CLIP, see path) or 'none'
        checkpoint="",              # workdir of the run to load when source='checkpoint'
        path="",                    # source='hf': 'hf:/dir' (CLIPModel), 'open_clip:/dir' or
                                    # 'rmc:/dir' (converted); crops at the teacher's image size
        ema_decay=0.99,
        regions="auto",             # 'crop' (RegionCLIP: the teacher's image tower on each
                                    # cropped box), 'head' (an rmc_jax teacher's own region head
                                    # on its patch grid, as the student embeds regions) or
                                    # 'auto': 'crop' for source 'hf', 'head' otherwise (README)
        crop_size=64,               # region crops are resized to this many pixels
        temperature=0.05,           # KL at 0.05 on both sides; RegionCLIP's 0.01 made the zero-
        student_temperature=0.05,   # shot AUROC, R@5, pointing lower on 3 of 3 seeds (experiments/)
        threshold=0.1,              # keep regions whose top teacher probability exceeds this (at
                                    # or below 1/len(concepts) it keeps every region)
        fixed_concepts=False,       # True: no distillation gradient into the concept texts' (the
                                    # text tower's) embeddings, as RegionCLIP's fixed encoder
        concepts="findings",        # what regions are scored against: 'findings' (no sides: a
                                    # crop has lost its position; train.concept_prompts) or
                                    # 'findings_and_sides'
        warmup_steps=100))          # distillation starts after the teacher has learnt a little

    # data.train: one dataset name or a weighted mixture "ms_cxr:1,mimic_cxr:3"; data.root: one
    # path, or "ms_cxr=/path,mimic_cxr=/path" for a mixture.
    c.data = ml_collections.ConfigDict(dict(
        train="synthetic", root="", eval="synthetic", eval_root="", eval_split="test",
        train_size=0, eval_size=512,     # 0 = the source's own size
        image_size=128, max_regions=4, num_negatives=1, max_text_len=64, max_caption_len=12,
        sentences_per_report=2, max_sentence_len=20, max_report_sentences=16,
        augment=False,  # see below
        tokenizer="", vocab_size=4096, max_bad_fraction=0.01,
        workers=-1))    # input processes; -1: from the host's cores (pipeline.auto_workers)
    # One hard negative per caption: three took a quarter of the step (their text); one, with
    # the time saved spent on more steps, raised retrieval (experiments/README.md).
    # Dataset constructor options, "images_root=/data/mimic-cxr-jpg,ms_cxr.split_csv=/x.csv"
    # (unprefixed: every dataset that takes the option; "name.key": that dataset only).
    c.data.source_options = ""
    # Training augmentation (crop keeping the regions, intensity jitter, grain) is off: at 400
    # steps (0.64 of an epoch of the embedded data) every variant learnt more without it (3
    # seeds, experiments/README.md); the default 1400 x 32 examples are 2.2 epochs.
    # Multi-epoch runs on real data: ``augment=true``.
    c.data.flip_probability = 0.0   # training flips swap left/right in captions and report too
    # Report text the text tower reads: 'impression_findings' (impression first, so the token
    # limit cuts findings rather than the summary; it raised zero-shot accuracy and AUROC in
    # experiments/results/recipes.md), 'findings_impression', 'impression' (CheXzero) or 'full'
    # (every section with its header).
    c.data.report_sections = "impression_findings"

    # The model: every field of rmc_jax.models.config (ModelConfig, VisionConfig, TextConfig),
    # where each hyperparameter and its default is defined, with this configuration's choices.
    # The input size is the data's: one value, referenced, so that setting either side sets
    # both. The text tower's tables are bounds, not copies: model.text.vocab_size rows hold the
    # tokenizer's data.vocab_size tokens or more, model.text.max_len positions the longest text
    # or more (configs/b16.py reads 256 tokens with BiomedCLIP's 512 positions).
    c.model = ml_collections.ConfigDict(dataclasses.asdict(ModelConfig(
        vision=VisionConfig(dtype="auto", position_init="sincos2d"),
        text=TextConfig(vocab_size=4096, dtype="auto"),
        roi_output_size=4)))
    c.model.vision.image_size = c.data.get_ref("image_size")

    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))

    # Pretrained towers (rmc_jax.pretrained): 'hf:/dir' (Hugging Face CLIPModel, or a BERT-family
    # model for the text tower), 'open_clip:/dir' (e.g. BiomedCLIP) or 'rmc:/dir' (converted by
    # tools/convert_checkpoint.py). The model section, data.image_size and (for text) the
    # tokenizer then follow the imported model; '' = train that tower from scratch.
    c.init = ml_collections.ConfigDict(dict(
        image="", text="",
        text_pooling=""))           # BERT text towers: 'cls', 'mean' or 'pooler' ('' = its own)

    # Evaluation on data.eval / data.eval_split at the end (and every eval_every steps).
    c.evals = ml_collections.ConfigDict(dict(
        enabled=True,
        prompts="",                 # JSON {class: [prompts]} to replace the default prompt sets
        batch_size=32,
        max_regions=16,             # regions per image scored (data.max_regions bounds training;
                                    # past it a region is counted in
                                    # eval/regions_beyond_max_regions, not scored)
        region_mode="both",         # region embeddings: 'head' (RoIAlign head), 'crop' (image
                                    # tower on the cropped box, for global models) or 'both'
        grounding=True,             # phrase grounding (CNR, mIoU, pointing) on region captions
        report=True,                # eval/report.md with ROC, recall@K, grounding figures
        protocols="",               # comma-separated: chexpert_5x200, chexpert_test,
                                    # rsna_pneumonia, ms_cxr, mimic_cxr (rmc_jax.evaluate.protocols)
        datasets=dict(              # local copies the protocols read ('' = not available)
            chexpert="", chexpert_5x200_csv="", chexpert_test="", rsna_pneumonia="",
            rsna_split_csv="",
            rsna_split="", ms_cxr="", ms_cxr_images="", ms_cxr_split="test", mimic_cxr="",
            mimic_cxr_reports="", mimic_cxr_split="test", max_examples=0)))

    if variant in ("global", "medclip"):
        c.loss.roi_weight = c.loss.neg_weight = c.loss.distill_weight = 0.0
        c.loss.sentence_weight, c.data.sentences_per_report = 0.0, 0
    if variant == "global":
        c.loss.global_positives = "pair"
    elif variant == "medclip":
        c.loss.global_loss = "medclip"
    elif variant == "roi_nodistill":
        c.loss.distill_weight = 0.0
    elif variant == "roi_noneg":
        c.loss.neg_weight = 0.0
    elif variant == "smoke":
        c.total_steps, c.batch_size, c.log_every = 6, 8, 2
        c.checkpoint_every, c.optimizer.warmup_steps, c.teacher.warmup_steps = 3, 2, 0
        c.text_pretrain.steps = 0   # the warm start has its own tests
        c.data.augment = True       # the training tests run the whole pipeline
        c.model.vision.update(patch_size=8, width=32, depth=1, num_heads=2,
                              dtype="float32")   # the same numbers on every machine
        c.model.text.update(vocab_size=512, width=32, depth=1, num_heads=2, max_len=32,
                            dtype="float32")
        c.model.embed_dim = 16
        c.model.roi_output_size = 2
        c.teacher.crop_size = 16
        c.data.update(image_size=32, max_regions=4, num_negatives=2, max_text_len=32,
                      max_caption_len=16, train_size=64, eval_size=16, vocab_size=512,
                      workers=0)

    for path, value in overrides.items():
        _set(c, path, value)
    return c


def _set(config, path: str, value) -> None:
    *parents, leaf = path.split(".")
    for name in parents:
        config = config[name]
    config[leaf] = value
