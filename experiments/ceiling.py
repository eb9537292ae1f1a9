"""What the image tower can learn in a step budget: the same ViT trained on the labels.

    python experiments/ceiling.py                         # the default run's budget
    python experiments/ceiling.py --steps=400,1600 --args=lr=1e-3
    python experiments/ceiling.py --set=model.vision.position_init=normal --name=ceiling_normal
    python experiments/ceiling.py --steps=1200 --probe=runs/roi-seed0 --no-ceiling --name=probe

The zero-shot targets ask the image tower to tell findings apart from what it learns in the
default run's steps. This measures how far that tower gets when it is told the answer: the
``roi`` configuration's image tower (same architecture and initialisers, optimizer, schedule,
batch, seed and training pipeline, so the same examples in the same order and augmentation)
with a linear head on its pooled output, trained on the labels with a masked binary
cross-entropy for ``--steps`` steps. It is evaluated on the same test split as the runs, with
the headline metrics' definitions: AUROC per class and its mean over the classes, and
single-label accuracy (argmax over classes on images with exactly one positive class).
A supervised classifier of the same tower on the same examples is the usual reference above
a zero-shot one (CheXzero, MedCLIP and GLoRIA report their supervised rows above their zero-shot
ones). It is not a strict bound: the contrastive runs see more than the labels (reports with
sides, zones and sizes; captions with boxes). But where the tower, told the labels, falls far
short of a zero-shot target at a budget, the budget rather than the recipe is what to question.

Image->report retrieval has a reference of its own, measured without training: what a model
that reads the image's findings perfectly could reach. The synthetic reports state findings
with their side, zone and size (and nothing else a picture shows), in varied words, so many
test reports state the same content (170 of 512 are normal). A model that recognises exactly
some set of attributes can do no better than rank the reports of the image's content first,
in an order it cannot choose; ``retrieval_references`` gives the expected R@K of such a model
for four attribute sets (finding names only, then sides, zones, then everything stated).

``--probe=RUN_WORKDIR`` adds a linear probe of a finished training run: its image tower frozen,
only the head trained on the labels in the same way. Between the tower told the labels and the
run's zero-shot score, it says whether what the run lacks is in its image features or in the
match with the text.

Results go to ``experiments/results/ceiling.{md,json}``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from configs import base  # noqa: E402
from rmc_jax import checkpoint as ckpt  # noqa: E402
from rmc_jax import train  # noqa: E402
from rmc_jax.data import pipeline as pipe  # noqa: E402
from rmc_jax.evaluate import eval_source  # noqa: E402
from rmc_jax.evaluate import metrics as M  # noqa: E402
from rmc_jax.evaluate import tasks  # noqa: E402
from rmc_jax.evaluate.embed import report_keys  # noqa: E402
from rmc_jax.models import VisionTransformer, model_config  # noqa: E402
from rmc_jax.optim import make_optimizer  # noqa: E402


class LabelClassifier(nn.Module):
    """images [B, H, W, C] -> label logits [B, C]: the image tower and a linear head."""
    vision: object
    num_labels: int

    @nn.compact
    def __call__(self, images):
        pooled, _ = VisionTransformer(self.vision, name="image_encoder")(images)
        return nn.Dense(self.num_labels, name="head")(pooled.astype(jnp.float32))


def masked_bce(logits, labels, mask):
    """Mean binary cross-entropy over the known labels. logits, labels, mask [B, C]."""
    mask = mask.astype(jnp.float32)
    loss = optax.sigmoid_binary_cross_entropy(logits, labels)
    return (loss * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def label_metrics(scores, labels, mask, label_names) -> dict:
    """AUROC per class (known labels, both classes present), their mean, single-label accuracy."""
    results, aurocs = {}, []
    for c, name in enumerate(label_names):
        known = mask[:, c].astype(bool)
        truth = labels[known, c] > 0
        if truth.any() and not truth.all():
            aurocs.append(M.auroc(scores[known, c], truth))
            results[f"auroc/{name}"] = aurocs[-1]
    results["auroc_mean"] = float(np.mean(aurocs))
    accuracy = tasks.single_label_accuracy(scores, labels, mask.astype(bool))  # zero-shot's
    results["accuracy_single_label"] = np.nan if accuracy is None else accuracy
    results["single_label_examples"] = float((mask.all(1) & (labels.sum(1) == 1)).sum())
    return results


def run(config, workdir: str, tower=None, out: dict | None = None) -> dict:
    """Train the labelled image tower for config.total_steps and evaluate it -> metrics.

    ``tower``: image encoder params (a run's, ``run_image_tower``) to keep frozen, so only the
    linear head trains: a linear probe of what that tower's pooled features hold.
    ``out['params']`` receives the classifier's final params."""
    config = train.resolve_compute_dtypes(config)
    # Reports and captions are tokenized as in the runs (the pipeline's per-example cost and
    # its random draws stay the same); only images and labels reach the classifier.
    data = train.training_data(config, workdir)
    workers = train.resolve_input_workers(config.data.workers)
    model = LabelClassifier(model_config(config.model.to_dict()).vision,
                            len(data.source.label_names))
    tx, _ = make_optimizer(config)

    @jax.jit
    def step(params, frozen, opt_state, images, labels, mask):
        loss, grads = jax.value_and_grad(lambda p: masked_bce(
            model.apply({"params": {**frozen, **p}}, images), labels, mask))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    size = config.data.image_size
    params = model.init(jax.random.key(config.seed), jnp.zeros((1, size, size, 1)))["params"]
    frozen = {}
    if tower is not None:
        expected = jax.tree.map(jnp.shape, params["image_encoder"])
        if jax.tree.map(jnp.shape, tower) != expected:
            raise SystemExit("the probed run's image tower differs from this configuration's "
                             "(pass the run's config arguments with --args / --set)")
        frozen, params = {"image_encoder": tower}, {"head": params["head"]}
    opt_state = tx.init(params)
    start = time.perf_counter()
    losses = []
    with pipe.closing(iter(pipe.prefetch(data.dataset, workers))) as batches:
        for i in range(config.total_steps):
            batch = next(batches)
            params, opt_state, loss = step(params, frozen, opt_state, batch["image"],
                                           batch["labels"], batch["label_mask"])
            losses.append(loss)
            if (i + 1) % 100 == 0:
                print(f"[step {i + 1}/{config.total_steps}] loss={float(loss):.4f} "
                      f"({time.perf_counter() - start:.0f} s)", flush=True)
    train_seconds = time.perf_counter() - start

    test = eval_source(config)
    logits = jax.jit(model.apply)
    scores, labels, masks = [], [], []
    eval_batches = pipe.EvaluationBatches(test, data.pipeline, data.tokenizer,
                                          batch_size=config.evals.batch_size,
                                          caption_tokenizer=data.captions)
    for batch in eval_batches:
        scores.append(np.asarray(logits({"params": {**frozen, **params}}, batch["image"])))
        labels.append(batch["labels"])
        masks.append(batch["label_mask"])
    n = eval_batches.count
    if out is not None:
        out["params"] = {**frozen, **params}
    results = label_metrics(np.concatenate(scores)[:n], np.concatenate(labels)[:n],
                            np.concatenate(masks)[:n], list(test.label_names))
    results.update(steps=config.total_steps, train_seconds=train_seconds,
                   final_loss=float(np.mean(jax.device_get(losses[-20:]))),
                   test_examples=float(n))
    return results


def run_image_tower(run_workdir: str):
    """The image encoder params of a training run's latest checkpoint."""
    checkpointer = ckpt.Checkpointer(run_workdir, 1, None)
    if checkpointer.latest_step() is None:
        raise SystemExit(f"--probe={run_workdir}: no checkpoint in {checkpointer.directory}")
    state = checkpointer.restore(None)
    checkpointer.close()
    return jax.tree.map(jnp.asarray, state["params"]["image_encoder"])


# What a reader of the image recognises of each finding, from coarse to everything the
# synthetic reports state about it.
READERS = {
    "finding names": lambda f: (f.name,),
    "+ sides": lambda f: (f.name, f.side),
    "+ zones": lambda f: (f.name, f.side, f.zone),
    "+ sizes (every stated attribute)": lambda f: (
        f.name, f.side, f.zone, f.size, tuple(sorted((l.side or "", l.size) for l in f.lesions))),
}


def expected_recall(content, report_key, ks=(1, 5, 10)) -> dict:
    """Expected image->report R@K of a model that sees only ``content`` and ties at random.

    content [N] (hashable: what the model recognises in image i and in report i, equal for
    equal content); report_key [N] (equal for equal report texts: the evaluation's positives).
    The best such model ranks the g reports of the query's content first, in random order; p
    of them are positives (the image's own report among them), so R@K = 1 - C(g-p, K) / C(g, K)
    (1 when g <= K). Report->image retrieval has the same expectation.
    """
    content, report_key = list(content), list(report_key)
    group = {}
    for c, key in zip(content, report_key):
        group.setdefault(c, []).append(key)
    recalls = {k: [] for k in ks}
    for c, key in zip(content, report_key):
        g, p = len(group[c]), group[c].count(key)
        for k in ks:
            recalls[k].append(1.0 if g <= k else 1.0 - math.comb(g - p, k) / math.comb(g, k))
    return {k: float(np.mean(v)) for k, v in recalls.items()}


def retrieval_references(config, workdir: str, ks=(1, 5, 10)) -> dict:
    """{reader: {"R@K": expected recall}} on the evaluation split (synthetic: its cases give
    the content), positives defined as in the evaluation (equal tokenized report text)."""
    data = train.training_data(config, workdir)
    test = eval_source(config)
    if not hasattr(test, "case"):
        raise ValueError(f"retrieval references need the synthetic evaluation data (its cases); "
                         f"data.eval is {config.data.eval!r}")
    batches = pipe.EvaluationBatches(test, data.pipeline, data.tokenizer,
                                     batch_size=config.evals.batch_size,
                                     caption_tokenizer=data.captions)
    columns = {"text_ids": [], "index": [], "has_report": []}
    for batch in batches:
        for name, rows in columns.items():
            rows.append(batch[name])
    text_ids, index, has_report = (np.concatenate(rows)[:batches.count]
                                   for rows in columns.values())
    keys = report_keys(text_ids[has_report])          # the evaluation leaves out empty reports
    cases = [test.case(int(i)) for i in index[has_report]]
    return {name: {f"R@{k}": r for k, r in expected_recall(
                [tuple(sorted(read(f) for f in case.findings)) for case in cases], keys,
                ks).items()}
            for name, read in READERS.items()}


PROBE_NOTE = ("Rows named 'linear probe of RUN' keep that training run's image tower frozen "
              "(its latest checkpoint) and train only the linear head, on the same examples "
              "with the same optimizer and schedule: what the run's pooled image features hold "
              "about the labels, against what its zero-shot classifier reads from them.")


def markdown(rows: dict, args: str, seed: int, references: dict | None = None,
             assignments=(), dtype: str = "") -> str:
    names = sorted({k for r in rows.values() for k in r if k.startswith("auroc/")})
    lines = [f"Generated by `python experiments/ceiling.py` on {datetime.date.today()} "
             f"({platform.machine()}, {os.cpu_count()} CPU cores, jax {jax.__version__}"
             f"{', compute dtype ' + dtype if dtype else ''}); "
             + ("linear probes of training runs' image towers, a head trained on the labels"
                if all("linear probe" in str(k) for k in rows) else
                "the `roi` configuration's image tower trained on the labels")
             + " (config arguments: "
             f"`{args or '(defaults)'}`"
             f"{''.join(f', --set={a}' for a in assignments)}, seed {seed}); evaluation on the "
             "synthetic test split.",
             *(["", PROBE_NOTE] if any("linear probe" in str(k) for k in rows) else []),
             "", "| steps | AUROC mean | single-label acc | "
             + " | ".join(n.split("/", 1)[1] for n in names) + " | train (s) |",
             "|---:|---:|---:|" + "---:|" * len(names) + "---:|"]
    for steps, r in rows.items():
        lines.append(f"| {steps} | {r['auroc_mean']:.3f} | {r['accuracy_single_label']:.3f} | "
                     + " | ".join(f"{r[n]:.3f}" for n in names)
                     + f" | {r['train_seconds']:.0f} |")
    if references:
        ks = list(next(iter(references.values())))
        lines += ["", "Image->report retrieval on the same test split, expected recall of a model "
                  "that recognises exactly the attributes named (and ranks the reports that "
                  "state the same at random; no training involved):", "",
                  "| the model recognises | " + " | ".join(ks) + " |",
                  "|---|" + "---:|" * len(ks)]
        for reader, recall in references.items():
            lines.append(f"| {reader} | " + " | ".join(f"{recall[k]:.3f}" for k in ks) + " |")
    return "\n".join(lines) + "\n"


def set_fields(config, assignments):
    """Apply 'dotted.path=value' assignments (as ``--config.PATH=VALUE`` does for a run): the
    value is parsed as the field's type; an unknown path is an error naming it."""
    for assignment in assignments:
        path, sep, value = assignment.partition("=")
        *parents, name = path.split(".")
        node = config
        for part in parents:
            node = node.get(part) if hasattr(node, "get") else None
        if not sep or not hasattr(node, "get") or name not in node:
            raise SystemExit(f"--set {assignment!r}: expected PATH=VALUE with PATH a config field")
        current = node[name]
        if isinstance(current, bool):
            if value.lower() not in base.BOOLEANS:
                raise SystemExit(f"--set {assignment!r}: {path} is true or false")
            node[name] = base.BOOLEANS[value.lower()]
        else:
            node[name] = type(current)(value)
    return config


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", default="", help="comma-separated step budgets (default: "
                        "the run's, configs/base.py with --args)")
    parser.add_argument("--args", default="", help="config arguments after 'roi,'")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=os.path.join(REPO, "runs", "ceiling"),
                        help="where the tokenizer is kept between budgets")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                        help="any config field, e.g. model.vision.position_init=normal")
    parser.add_argument("--name", default="ceiling", help="file name of the results")
    parser.add_argument("--probe", action="append", default=[], metavar="RUN_WORKDIR",
                        help="also a linear probe of this training run's image tower (frozen; "
                        "only the head trains) at each budget")
    parser.add_argument("--no-ceiling", dest="ceiling", action="store_false",
                        help="only the probes (--probe)")
    options = parser.parse_args()

    def config(steps=None):
        arg = ",".join(p for p in ("roi", options.args, steps and f"steps={steps}",
                                   f"seed={options.seed}") if p)
        return set_fields(base.get_config(arg), options.set)

    towers = {os.path.basename(os.path.normpath(w)): run_image_tower(w) for w in options.probe}
    rows = {}
    budgets = [int(s) for s in options.steps.split(",") if s] or [config().total_steps]
    for steps in budgets:
        jobs = ({str(steps): None} if options.ceiling else {}) | {
            f"{steps}, linear probe of {name}": tower for name, tower in towers.items()}
        for label, tower in jobs.items():
            rows[label] = run(config(steps), options.workdir, tower)
            print(f"{label}: AUROC {rows[label]['auroc_mean']:.3f}, single-label accuracy "
                  f"{rows[label]['accuracy_single_label']:.3f}", flush=True)
    references = retrieval_references(config(), options.workdir) if options.ceiling else None
    dtype = train.resolve_compute_dtypes(config()).model.vision.dtype
    table = markdown(rows, options.args, options.seed, references, options.set, dtype)
    os.makedirs(options.out, exist_ok=True)
    with open(os.path.join(options.out, f"{options.name}.json"), "w") as f:
        json.dump({"args": options.args, "set": options.set, "seed": options.seed,
                   "dtype": dtype,
                   "results": rows, "retrieval_references": references}, f, indent=1)
    with open(os.path.join(options.out, f"{options.name}.md"), "w") as f:
        f.write(table)
    print(table)


if __name__ == "__main__":
    main()
