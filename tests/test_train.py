"""The trainer end to end on the embedded synthetic data with the 'smoke' model."""

import dataclasses
import functools
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from configs.base import VARIANTS, get_config  # noqa: E402

from rmc_jax import checkpoint as ckpt  # noqa: E402
from rmc_jax import objective, optim  # noqa: E402
from rmc_jax import sharding as shd  # noqa: E402
from rmc_jax import train  # noqa: E402
from rmc_jax.data.tokenizer import train_wordpiece  # noqa: E402


def smoke(variant="roi", **overrides):
    config = get_config(f"{variant},steps=4" if variant != "smoke" else "smoke")
    config.model.vision.update(image_size=32, patch_size=8, width=32, depth=1, num_heads=2,
                               dtype="float32")
    config.model.text.update(vocab_size=512, width=32, depth=1, num_heads=2, max_len=32,
                             dtype="float32")
    config.model.embed_dim, config.model.roi_output_size = 16, 2
    config.teacher.update(crop_size=16, warmup_steps=0)
    config.data.update(image_size=32, max_regions=4, num_negatives=2, max_text_len=32,
                       max_caption_len=16, train_size=64, vocab_size=512, eval_size=16,
                       workers=0)
    config.update(batch_size=8, log_every=2, checkpoint_every=2)
    config.evals.enabled = False  # evaluated where a test checks it
    config.optimizer.warmup_steps = 1
    config.text_pretrain.steps = 0  # the warm start's tests are tests/test_text_pretrain.py
    # One device: the 8 simulated ones cost a third more per run on two cores. The tests that
    # are about sharding set mesh.data (the roi variant trains and evaluates on all 8).
    config.mesh.data = 1
    for key, value in overrides.items():
        train_config_set(config, key, value)
    return config


def train_config_set(config, path, value):
    *parents, leaf = path.split(".")
    for name in parents:
        config = config[name]
    config[leaf] = value


# These variants only zero weights of 'roi', whose run exercises every term ('global' zeroes
# all but the global term, as 'medclip' does before swapping that term for MedCLIP's); they
# run with `pytest -m slow` (the default run leaves them out to stay within the time budget).
ABLATIONS = ("global", "roi_nodistill", "roi_noneg")


@pytest.mark.parametrize("variant", [
    pytest.param(v, marks=pytest.mark.slow) if v in ABLATIONS else v
    for v in VARIANTS if v != "smoke"])
def test_every_variant_trains_and_writes_metrics(tmp_path, capsys, variant):
    # The report's figures are drawn once (for roi); its contents are tested with evaluation.
    # medclip trains in bf16 compute: parameters, optimizer state and losses stay float32.
    half = ({"model.vision.dtype": "bfloat16", "model.text.dtype": "bfloat16"}
            if variant == "medclip" else {})
    result = train.train(smoke(variant, **{"evals.enabled": True,
                                           "mesh.data": -1 if variant == "roi" else 1,
                                           "evals.report": variant == "roi",
                                           "evals.grounding": variant == "roi"}, **half),
                         str(tmp_path))
    metrics = result["metrics"]
    assert np.isfinite(metrics["total"]) and metrics["bad_examples"] == 0
    state = result["state"]
    assert {x.dtype for x in jax.tree.leaves((state["params"], state["opt_state"]))
            if jnp.issubdtype(x.dtype, jnp.floating)} == {np.dtype("float32")}
    expected_terms = {"global"} | ({"roi", "neg", "distill"} if variant == "roi" else set())
    assert expected_terms <= set(metrics)
    lines = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
    assert [x["step"] for x in lines] == [2, 4]
    diagnostics = {f"{kind}/{group}" for kind in ("param_norm", "update_norm")
                   for group in ("image", "text", "rest")}
    diagnostics |= {"embedding_norm/image", "embedding_norm/text"} | (
        {"embedding_norm/regions"} if variant == "roi" else set())
    assert all(diagnostics <= set(x) and all(x[k] > 0 for k in diagnostics) for x in lines)
    out = capsys.readouterr().out
    assert "_norm/" not in out  # metrics.jsonl and TensorBoard only
    rule = ("global loss: the normal studies of a batch are positives together (label "
            "'no_finding' known and positive)")
    assert (rule in out) == (variant not in ("global", "medclip")), out
    assert all(0 < x["mfu"] < 1 and x["examples_per_second"] > 0 for x in lines), lines
    assert len(os.listdir(tmp_path / "tensorboard")) == 1  # TensorBoard event file
    assert os.path.isdir(tmp_path / "checkpoints" / "4")
    assert os.path.isfile(tmp_path / "tokenizer.json")
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert os.path.isfile(tmp_path / "eval" / "report.md") == (variant == "roi")
    for key in ("zeroshot/auroc_mean", "retrieval/image_to_report_R@1",
                "retrieval/report_to_image_median_rank", "regions/region_to_caption_R@1",
                "regions/caption_to_region_semantic_R@5", "hard_negatives/accuracy_mean"):
        assert key in results and np.isfinite(results[key]), key
    assert results == result["eval"] or set(results) <= set(result["eval"])


class _EveryTenthUnreadable:
    """A source whose examples 0, 10, 20, ... raise as unreadable images do."""

    def __init__(self, source):
        self.source = source

    def __len__(self):
        return len(self.source)

    def __getitem__(self, index):
        if index % 10 == 0:
            raise OSError(f"cannot identify image file '/data/{index}.png'")
        return self.source[index]

    def __getattr__(self, name):
        if name == "source":  # not set yet while unpickling (in the input worker)
            raise AttributeError(name)
        return getattr(self.source, name)


@pytest.mark.filterwarnings("ignore:skipping unreadable example")
def test_resume_is_bit_identical(tmp_path, monkeypatch):
    # With per-tower control (its own optimizer state: partitioned AdamW, nothing for the frozen
    # image tower), one data worker process, whose iterator state is checkpointed too, and bad
    # examples skipped on both sides of the interruption, whose run total survives it.
    towers = {"data.workers": 1, "optimizer.tower_lr": "text=2e-3", "optimizer.freeze": "image",
              "data.max_bad_fraction": 0.2}
    open_source = train.data_sources.open_source
    monkeypatch.setattr(train.data_sources, "open_source",
                        lambda *a, **k: _EveryTenthUnreadable(open_source(*a, **k)))
    straight = train.train(smoke(total_steps=6, **towers), str(tmp_path / "a"))
    train.train(smoke(total_steps=6, checkpoint_every=100, **towers), str(tmp_path / "b"),
                stop_at_step=3)
    # Another worker count reads the data in another order: refused, with the fix.
    with pytest.raises(ValueError, match=r"--config\.data\.workers=1"):
        train.train(smoke(total_steps=6, **dict(towers, **{"data.workers": 0})),
                    str(tmp_path / "b"))
    # data.workers=-1 (sized from the host) resumes with the checkpoint's count, whatever
    # this host would choose.
    monkeypatch.setattr(train.pipe, "auto_workers", lambda: 0)
    resumed = train.train(smoke(total_steps=6, **dict(towers, **{"data.workers": -1})),
                          str(tmp_path / "b"))
    for x, y in zip(jax.tree.leaves(straight["state"]), jax.tree.leaves(resumed["state"])):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    last = [json.loads(x) for x in open(tmp_path / "b" / "metrics.jsonl")][-1]
    assert last["step"] == 6 and last["input_workers"] == 1
    before = [json.loads(x) for x in open(tmp_path / "b" / "metrics.jsonl")][0]
    assert before["step"] == 2 and before["bad_examples_total"] > 0
    assert resumed["metrics"]["bad_examples_total"] == \
        straight["metrics"]["bad_examples_total"] > before["bad_examples_total"]
    # The frozen tower is bit-identical to its initialisation; the rest has moved.
    config = smoke(total_steps=6, **towers)
    model = train.build_model(config.model)
    initial, _ = train.init_state(model, optim.make_optimizer(config)[0], config,
                                  shd.make_mesh(1, 1))
    groups = optim.tower_labels(initial["params"])
    moved = {"image": [], "text": [], "rest": []}
    for group, x, y in zip(jax.tree.leaves(groups), jax.tree.leaves(initial["params"]),
                           jax.tree.leaves(straight["state"]["params"])):
        moved[group].append(not np.array_equal(np.asarray(x), np.asarray(y)))
    assert not any(moved["image"]) and all(moved["text"]), moved
    assert any(moved["rest"]), moved
    lines = [json.loads(x) for x in open(tmp_path / "a" / "metrics.jsonl")]
    assert all(x["learning_rate/image"] == 0 and x["learning_rate/text"] > x["learning_rate"]
               for x in lines), lines
    assert all(x["input_workers"] == 1 for x in lines)
    # Per-tower diagnostics: the norm of each group's parameters after the step, and of the
    # step's update (none for the frozen tower).
    final = optim.tower_norms(straight["state"]["params"], "param_norm")
    assert lines[-1]["step"] == 6
    for group in ("image", "text", "rest"):
        logged, computed = lines[-1][f"param_norm/{group}"], final[f"param_norm/{group}"]
        assert logged == pytest.approx(float(computed), rel=1e-6)
    assert float(final["param_norm/image"]) == float(
        optim.tower_norms(initial["params"], "param_norm")["param_norm/image"])
    assert all(x["update_norm/image"] == 0 and x["update_norm/text"] > 0
               and x["update_norm/rest"] > 0 for x in lines), lines


def test_tower_rates_reach_their_leaves_and_frozen_towers_keep_no_moments():
    """One Adam step on constant gradients moves every unclipped leaf by exactly its group's
    scheduled rate (weight decay off): the rate of each group is applied to its leaves only."""
    config = smoke(total_steps=10, **{"optimizer.tower_lr": "text=1e-3, image=4e-4",
                                      "optimizer.weight_decay": 0.0,
                                      "optimizer.warmup_steps": 2})
    model = train.build_model(config.model)
    abstract = jax.eval_shape(lambda key: model.init(key, **train.example_inputs(model)),
                              jax.random.key(0))["params"]
    params = jax.tree.map(lambda x: np.full(x.shape, 0.5, x.dtype), abstract)
    groups = optim.tower_labels(params)
    assert {g for g in jax.tree.leaves(groups)} == {"image", "text", "rest"}
    named = {shd.path_name(path): group for path, group in
             jax.tree_util.tree_flatten_with_path(groups)[0]}
    assert named["image_proj/kernel"] == "image" and named["text_proj/kernel"] == "text"
    assert named["log_inv_temperature"] == named["region_head/post/fc/kernel"] == \
        named["region_proj/kernel"] == "rest"
    tx, learning_rates = optim.make_optimizer(config)
    state, grads = tx.init(params), jax.tree.map(jnp.ones_like, params)
    apply = jax.jit(tx.update)
    for step in range(3):
        updates, state = apply(grads, state, params)
        rates = {k: float(v) for k, v in learning_rates(step).items()}
        expected = {"image": rates["learning_rate/image"], "text": rates["learning_rate/text"],
                    "rest": rates["learning_rate"]}
        for group, update in zip(jax.tree.leaves(groups), jax.tree.leaves(updates)):
            np.testing.assert_allclose(np.asarray(update), -expected[group], rtol=1e-5)
    assert rates == pytest.approx({"learning_rate": 5e-4, "learning_rate/image": 4e-4,
                                   "learning_rate/text": 1e-3})  # step 2: the peak
    # Frozen (its parameters stay bit-identical: test_resume_is_bit_identical): no moments held
    # for its leaves. Without tower options the state is the plain AdamW one (checkpoints of
    # earlier runs restore).
    frozen = smoke(**{"optimizer.freeze": "image"})
    tx, learning_rates = optim.make_optimizer(frozen)
    sizes = {g: sum(x.size for x, l in zip(jax.tree.leaves(params), jax.tree.leaves(groups))
                    if l == g) for g in ("image", "text", "rest")}
    moments = sum(x.size for x in jax.tree.leaves(tx.init(params))
                  if jnp.issubdtype(x.dtype, jnp.floating))
    assert moments == 2 * (sizes["text"] + sizes["rest"])
    assert float(learning_rates(3)["learning_rate/image"]) == 0.0
    plain, learning_rates = optim.make_optimizer(smoke())
    assert jax.tree.structure(plain.init(params)) == jax.tree.structure(optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(optax.constant_schedule(1e-3),
                    mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p))).init(params))
    assert set(learning_rates(0)) == {"learning_rate"}


def _fixed_batch_setup(config, mesh):
    """``train.fixed_batch_step`` on 16 synthetic examples at the config's image size, with a
    512-token vocabulary at its report length."""
    source = train.data_sources.open_source("synthetic", "", "train", 16, 0,
                                            config.data.image_size)
    tokenizer = train_wordpiece(train.corpus(source, 16), vocab_size=512,
                                max_len=config.data.max_text_len)
    return train.fixed_batch_step(config, mesh, source, tokenizer)


SYNTHETIC_NO_FINDING = objective.no_finding_column(
    train.data_sources.open_source("synthetic", "", "train", 1, 0, 32).label_names)


def test_normal_studies_are_one_id_of_the_global_loss():
    """With a 'No Finding' class a study is normal when that label is known and positive;
    without one, when every label is known and negative; the other studies keep their own
    ids (their index in the batch)."""
    assert objective.no_finding_column(["Atelectasis", "No Finding"]) == 1
    assert objective.no_finding_column(["nodule", "no-finding"]) == 1
    assert objective.no_finding_column(["No finding", "nodule"]) == 0   # VinDr's spelling
    assert objective.no_finding_column(["nodule", "mass"]) is None
    labels = jnp.array([[0, 1], [1, 0], [0, 1], [0, 0], [0, 1]], jnp.float32)
    mask = jnp.array([[1, 1], [1, 1], [1, 1], [1, 1], [1, 0]], bool)
    ids = objective.global_pair_ids(labels, mask, no_finding=1)
    np.testing.assert_array_equal(ids, [-1, 1, -1, 3, 4])  # 4: 'No Finding' unknown
    ids = objective.global_pair_ids(labels[:, :1], mask[:, :1], no_finding=None)
    np.testing.assert_array_equal(ids, [-1, 1, -1, -1, -1])
    ids = objective.global_pair_ids(labels, mask.at[0, 0].set(False), no_finding=None)
    np.testing.assert_array_equal(ids, [0, 1, 2, -1, 4])  # 0: a label unknown
    np.testing.assert_array_equal(
        objective.global_pair_ids(jnp.zeros((3, 0)), jnp.zeros((3, 0), bool), None), [0, 1, 2])


def test_the_global_term_counts_normal_studies_as_positives_together():
    """loss.global_positives='normal': the step's global term is the InfoNCE whose positives
    are each image's own report and every normal study's report for a normal image
    (global_pair_ids), computed from the model's own embeddings; 'pair' is plain CLIP."""
    from rmc_jax import losses
    from rmc_jax.models import RegionCLIP

    config = smoke(**{"loss.roi_weight": 0.0, "loss.neg_weight": 0.0,
                      "loss.distill_weight": 0.0})
    mesh = shd.make_mesh(1, 1)
    _, state, batch, concepts = _fixed_batch_setup(config, mesh)
    model = train.build_model(config.model)
    apply = functools.partial(model.apply, {"params": state["params"]})
    images, _ = apply(batch["image"], method=RegionCLIP.image_features)
    reports = apply(batch["text_ids"], batch["text_mask"], method=RegionCLIP.encode_text)
    tau = apply(method=RegionCLIP.temperature)
    ids = objective.global_pair_ids(batch["labels"], batch["label_mask"], SYNTHETIC_NO_FINDING)
    assert int((ids == -1).sum()) >= 2  # the batch has normal studies to share an id
    terms = {}
    for positives in ("normal", "pair"):
        config.loss.global_positives = positives
        _, logs = objective.batch_losses(state["params"], None, batch, concepts, 0, model=model,
                                         config=config, mesh=mesh,
                                         no_finding=SYNTHETIC_NO_FINDING)
        terms[positives] = float(logs["global"])
    expected = {"normal": losses.global_contrastive_loss(images, reports, tau, pair_ids=ids),
                "pair": losses.global_contrastive_loss(images, reports, tau)}
    for positives, value in terms.items():
        np.testing.assert_allclose(value, expected[positives], rtol=1e-5, err_msg=positives)
    assert terms["normal"] < terms["pair"] - 1e-3


def test_the_sentence_term_is_the_sentence_image_loss_of_the_models_embeddings():
    """The step's sentence term is losses.sentence_image_loss of the model's image embeddings
    and of the batch's drawn report sentences through the text tower, with the reports'
    sentence hashes saying which images state each; the batch has sentences that several
    reports state ("No pneumothorax"), so the shared positives are exercised."""
    from rmc_jax import losses
    from rmc_jax.models import RegionCLIP

    config = smoke()
    assert config.loss.sentence_weight > 0 and config.data.sentences_per_report == 2
    mesh = shd.make_mesh(1, 1)
    _, state, batch, concepts = _fixed_batch_setup(config, mesh)
    model = train.build_model(config.model)
    apply = functools.partial(model.apply, {"params": state["params"]})
    images, _ = apply(batch["image"], method=RegionCLIP.image_features)
    b, s, length = batch["sentence_ids"].shape
    assert (b, s, length) == (config.batch_size, 2, config.data.max_sentence_len)
    sentences = apply(batch["sentence_ids"].reshape(b * s, length),
                      batch["sentence_mask"].reshape(b * s, length),
                      method=RegionCLIP.encode_text).reshape(b, s, -1)
    tau = apply(method=RegionCLIP.temperature)
    stated = np.asarray(batch["report_sentence_hash"])
    shared = [h for h in np.asarray(batch["sentence_hash"]).ravel()
              if h >= 0 and (stated == h).any(axis=1).sum() > 1]
    assert shared, "no drawn sentence is stated by two reports of the batch"
    _, logs = objective.batch_losses(state["params"], None, batch, concepts, 0, model=model,
                                     config=config, mesh=mesh, no_finding=SYNTHETIC_NO_FINDING)
    np.testing.assert_allclose(
        logs["sentence"], losses.sentence_image_loss(images, sentences, batch["sentence_hash"],
                                                     batch["report_sentence_hash"], tau),
        rtol=1e-5)


def test_siglip_global_term_is_the_sigmoid_loss_with_the_models_bias(capsys):
    """loss.global_loss='siglip' alone turns on the model's logit bias (said on stdout); the
    step's global term is losses.sigmoid_contrastive_loss of the model's embeddings with that
    bias and the normal studies as positives together; 8 devices give one device's losses,
    gradient norm and bias over three steps, the bias learning (the backends' equality is
    tests/test_losses.py's)."""
    from rmc_jax import losses
    from rmc_jax.models import RegionCLIP

    config = smoke(**{"loss.global_loss": "siglip"})
    assert not config.model.learn_logit_bias
    resolved = train.resolve_logit_bias(config)
    assert resolved.model.learn_logit_bias and not config.model.learn_logit_bias
    assert "the model learns a logit bias" in capsys.readouterr().out
    histories, biases = {}, {}
    for devices in (1, 8):
        mesh = shd.make_mesh(devices, 1)
        step, state, batch, concepts = _fixed_batch_setup(config, mesh)
        if devices == 1:
            model = train.build_model(resolved.model)
            apply = functools.partial(model.apply, {"params": state["params"]})
            images, _ = apply(batch["image"], method=RegionCLIP.image_features)
            reports = apply(batch["text_ids"], batch["text_mask"], method=RegionCLIP.encode_text)
            tau = apply(method=RegionCLIP.temperature)
            bias = apply(method=RegionCLIP.logit_bias)
            assert float(bias) == resolved.model.init_logit_bias
            ids = objective.global_pair_ids(batch["labels"], batch["label_mask"],
                                            SYNTHETIC_NO_FINDING)
            _, logs = objective.batch_losses(state["params"], None, batch, concepts, 0,
                                             model=model, config=resolved, mesh=mesh,
                                             no_finding=SYNTHETIC_NO_FINDING)
            np.testing.assert_allclose(
                logs["global"], losses.sigmoid_contrastive_loss(
                    images, reports, tau, bias, pair_mask=batch["has_report"], pair_ids=ids),
                rtol=1e-5)
        history = []
        for _ in range(3):
            state, metrics = step(state, batch, concepts, None)
            history.append(jax.device_get(metrics))
        histories[devices] = history
        biases[devices] = float(state["params"]["logit_bias"])
    assert biases[1] != resolved.model.init_logit_bias
    np.testing.assert_allclose(biases[8], biases[1], rtol=1e-6)
    for metrics, reference in zip(histories[8], histories[1]):
        for name in ("global", "roi", "neg", "total", "grad_norm", "logit_bias"):
            np.testing.assert_allclose(metrics[name], reference[name], rtol=2e-5, atol=1e-6,
                                       err_msg=name)


def fixed_batch_losses(config, steps: int, mesh_devices: int) -> list[dict]:
    """Metrics of ``steps`` train steps on one fixed batch of ``config.batch_size`` examples, as
    floats; with several processes each feeds its rows of the same global batch."""
    mesh = shd.make_mesh(mesh_devices, 1)
    step, state, batch, concepts = _fixed_batch_setup(config, mesh)
    history = []
    for _ in range(steps):
        state, metrics = step(state, batch, concepts, None)
        history.append({k: float(v) for k, v in jax.device_get(metrics).items()})
    return history


def test_loss_decreases_on_a_fixed_batch():
    config = smoke(total_steps=40)
    config.optimizer.update(learning_rate=2e-3, warmup_steps=1)
    totals = [m["total"] for m in fixed_batch_losses(config, 25, mesh_devices=1)]
    assert totals[-1] < 0.5 * totals[0], totals


@pytest.mark.parametrize("backend,gradients", [
    ("gather", False),  # the default backend: the step the roi variant's run compiled already
    pytest.param("gather", True, marks=pytest.mark.slow),
    pytest.param("ring", True, marks=pytest.mark.slow)])
def test_eight_devices_equal_one_device(backend, gradients):
    """Same batch, same init: the sharded step's losses, gradient norm and per-tower update and
    parameter norms equal one device's over two steps (the second after an update of every
    parameter), and with ``gradients`` (-m slow: two more compiles) every gradient element.
    (Parameters are compared through gradients: Adam's first update is ~lr * sign(grad), which
    turns float noise in near-zero gradients into +-lr; the norms of the update do not see it.)"""
    config = smoke(**{"loss.backend": backend})
    results = []
    for devices in (1, 8):
        mesh = shd.make_mesh(devices, 1)
        step, state, batch, concepts = _fixed_batch_setup(config, mesh)
        grads = None
        if gradients:
            model = train.build_model(config.model)
            loss_fn = functools.partial(objective.batch_losses, model=model, config=config,
                                        mesh=mesh, no_finding=SYNTHETIC_NO_FINDING)
            teacher = objective.region_teacher(config, model)  # the EMA teacher: the params
            teacher_logits = jax.jit(teacher)(state["params"], batch["image"], batch["boxes"],
                                              concepts)
            grads = jax.device_get(jax.jit(jax.grad(
                lambda p: loss_fn(p, teacher_logits, batch, concepts, 0)[0]))(state["params"]))
        history = []
        for _ in range(2):
            state, metrics = step(state, batch, concepts, None)
            history.append(jax.device_get(metrics))
        results.append((grads, history))
    (grads_1, history_1), (grads_8, history_8) = results
    norms = [f"{kind}/{group}" for kind in ("param_norm", "update_norm")
             for group in ("image", "text", "rest")]
    for metrics_1, metrics_8 in zip(history_1, history_8):
        for key in ("global", "roi", "neg", "distill", "total", "grad_norm", *norms):
            np.testing.assert_allclose(metrics_8[key], metrics_1[key], rtol=2e-5, atol=1e-6,
                                       err_msg=key)
    if gradients:
        for x, y in zip(jax.tree.leaves(grads_1), jax.tree.leaves(grads_8)):
            np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-5 * float(np.abs(x).max()))


def test_fsdp_mesh_shards_parameters():
    config = smoke()
    mesh = shd.make_mesh(2, 4)
    model = train.build_model(config.model)
    tx, _ = optim.make_optimizer(config)
    state, _ = train.init_state(model, tx, config, mesh)
    kernel = state["params"]["text_encoder"]["token_embed"]["embedding"]
    assert "fsdp" in str(kernel.sharding.spec)
    restored_abstract = ckpt.abstract_like(state)
    assert restored_abstract["params"]["text_encoder"]["token_embed"]["embedding"].sharding \
        == kernel.sharding


@pytest.mark.parametrize("override,message", [
    ({"loss.roi_weight": -1.0}, "loss.roi_weight = -1.0 is negative"),
    ({"model.init_temperature": 0.0}, "init_temperature"),
    ({"teacher.source": "clip"}, "teacher.source"),
    ({"teacher.source": "checkpoint", "teacher.checkpoint": "/nonexistent/run"},
     "not the workdir of an rmc_jax run"),
    ({"loss.backend": "allreduce"}, "loss.backend"),
    ({"data.max_caption_len": 64}, "exceed model.text.max_len"),
    ({"data.max_sentence_len": 64}, "exceed model.text.max_len"),
    ({"data.sentences_per_report": 0}, "needs report sentences"),
    ({"loss.sentence_weight": 0.0}, "set data.sentences_per_report = 0 too"),
    ({"optimizer.tower_lr": "vision=1e-4"}, "unknown tower 'vision'; the towers are"),
    ({"optimizer.tower_lr": "text:1e-4"}, "is not TOWER=RATE"),
    ({"optimizer.tower_lr": "text=fast"}, "text='fast' is not a number"),
    ({"optimizer.tower_lr": "text=0"}, "optimizer.freeze=text"),
    ({"optimizer.freeze": "image,vision"}, r"unknown tower\(s\) \['vision'\]"),
    ({"optimizer.freeze": "text", "optimizer.tower_lr": "text=1e-4"}, "drop one of the two"),
    ({"optimizer.freeze": "image,text", "loss.roi_weight": 0.0, "loss.neg_weight": 0.0,
      "loss.distill_weight": 0.0}, "only the temperature would train"),
    ({"loss.global_loss": "sigmoid"}, "loss.global_loss"),
    ({"loss.global_positives": "labels"}, "loss.global_positives = 'labels'; choose one of"),
    ({"teacher.regions": "box"}, "teacher.regions = 'box'"),
    ({"teacher.regions": "head", "teacher.source": "hf"}, "needs an rmc_jax teacher"),
])
def test_bad_configs_fail_before_compiling(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        train.train(smoke(**override), str(tmp_path))
    assert not os.path.exists(tmp_path / "checkpoints")


def test_config_arguments_after_the_variant():
    config = get_config("global,steps=10,res=64,dtype=bfloat16,lr=1e-3")
    assert (config.total_steps, config.data.image_size, config.model.vision.image_size) == \
        (10, 64, 64)
    assert config.model.vision.dtype == config.model.text.dtype == "bfloat16"
    assert config.optimizer.learning_rate == 1e-3 and config.loss.roi_weight == 0.0
    with pytest.raises(ValueError, match="KEY=VALUE with KEY in"):
        get_config("roi,precision=bf16")
    assert get_config("roi").data.augment is False          # measured better off (experiments/)
    assert get_config("roi,augment=true").data.augment is True
    assert get_config("roi,augment=False").data.augment is False  # not bool("False")
    with pytest.raises(ValueError, match="augment is true or false"):
        get_config("roi,augment=sometimes")


def test_model_sizes_that_are_the_datas_are_one_value():
    """The input size is set once, on either side; the text tower's tables are bounds."""
    config = smoke(**{"model.vision.image_size": 64, "data.vocab_size": 300,
                      "model.text.max_len": 48})
    assert config.data.image_size == config.model.vision.image_size == 64
    assert config.data.vocab_size == 300 and config.model.text.vocab_size == 512
    assert config.data.max_text_len == 32 and config.model.text.max_len == 48
    assert train.build_model(config.model).vision.image_size == 64
    resolved = config.copy_and_resolve_references()
    assert resolved.model.vision.image_size == 64 and resolved.data.image_size == 64
    base = get_config("roi")
    assert (base.model.text.vocab_size, base.model.text.max_len) == (base.data.vocab_size,
                                                                      base.data.max_text_len)
    # Every model field is in the config, with the library's defaults where the config is silent.
    from rmc_jax.models import ModelConfig
    assert set(config.model) == {f.name for f in dataclasses.fields(ModelConfig)}
    assert config.model.vision.layer_norm_eps == ModelConfig().vision.layer_norm_eps


def test_unknown_config_key_fails_on_the_command_line(tmp_path):
    import subprocess

    root = os.path.join(os.path.dirname(__file__), "..")
    result = subprocess.run(
        [sys.executable, "-m", "rmc_jax.main", "--config=configs/base.py:smoke",
         "--config.loss.roi_wieght=1", f"--workdir={tmp_path}"],
        cwd=root, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "roi_wieght" in result.stderr


def test_sigterm_saves_a_checkpoint_to_resume_from(tmp_path):
    """A preemption signals the whole process group, input workers included: the trainer
    saves, stops its workers in order and leaves no shared memory behind."""
    import signal
    import subprocess
    import time

    root = os.path.join(os.path.dirname(__file__), "..")
    command = [sys.executable, "-m", "rmc_jax.main", "--config=configs/base.py:smoke",
               "--config.total_steps=100000", "--config.checkpoint_every=100000",
               "--config.log_every=1", "--config.evals.enabled=False", f"--workdir={tmp_path}"]
    env = dict(os.environ, XLA_FLAGS="")  # one CPU device, as a user's run
    process = subprocess.Popen(command + ["--config.data.workers=1"], cwd=root, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and not (metrics.exists()
                                          and metrics.read_text().count("\n") >= 3):
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGTERM)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 143, output[-2000:]
    assert "preempted at step" in output
    assert "leaked" not in output and "Traceback" not in output, output[-2000:]
    saved = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
    assert saved and saved[-1] >= 3
    # What a rerun resumes from (test_resume_is_bit_identical resumes such a checkpoint): the
    # train state, the input workers' positions and the run's counters, all at the last step.
    checkpointer = ckpt.Checkpointer(str(tmp_path), 100000, 3)
    assert checkpointer.latest_step() == saved[-1]
    assert checkpointer.saved_input_workers() == 1
    assert "bad_examples_total" in checkpointer.restore_counters()
    checkpointer.close()


# ~1 min; tests/test_bad_data_cli.py runs --mode=eval on a trained workdir for every format.
@pytest.mark.slow
def test_eval_mode_reads_the_latest_checkpoint(tmp_path):
    import subprocess

    train.train(smoke(total_steps=2), str(tmp_path))
    assert not (tmp_path / "eval").exists()
    root = os.path.join(os.path.dirname(__file__), "..")
    result = subprocess.run(
        [sys.executable, "-m", "rmc_jax.main", "--config=configs/base.py:smoke",
         "--mode=eval", f"--workdir={tmp_path}", "--config.evals.report=False",
         "--config.evals.grounding=False"], cwd=root, capture_output=True, text=True,
        timeout=240, env=dict(os.environ, XLA_FLAGS=""))  # one CPU device, as a user's run
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["eval/examples"] == 16 and "zeroshot/auroc_mean" in results


class _TextsOnly:
    """A source whose every image is unreadable; its text is there."""

    name, label_names = "broken", ()

    def __len__(self):
        return 3

    def __getitem__(self, index):
        raise OSError(f"cannot identify image file '/data/{index}.png'")

    def texts(self, index):
        return f"report {index}", (f"caption {index}",)


def test_the_tokenizer_corpus_reads_text_without_decoding_an_image():
    assert list(train.corpus(_TextsOnly())) == [
        "report 0", "caption 0", "report 1", "caption 1", "report 2", "caption 2"]
    # A corrupt record's text cannot be read: left out and named, within the budget.
    broken = _TextsOnly()
    broken.texts = lambda i: (_ for _ in ()).throw(RuntimeError("/d/r.array_record record 1: "
                                                                "Corrupted")) if i == 1 else (
        f"report {i}", ())
    with pytest.warns(UserWarning, match=r"skipping unreadable text of example 1 of broken: "
                                         r"RuntimeError: /d/r.array_record record 1"):
        assert list(train.corpus(broken, max_bad_fraction=0.5)) == ["report 0", "report 2"]
    with pytest.warns(UserWarning), pytest.raises(train.pipe.BadDataError,
                                                  match=r"broken\[1\]: RuntimeError"):
        list(train.corpus(broken, max_bad_fraction=0.1))
    with pytest.raises(TypeError, match="'tiny' has no texts"):
        list(train.corpus(type("Tiny", (), {"name": "tiny", "__len__": lambda self: 1})()))


def _bookkeeping(skipped_examples, regions_cut=0):
    """The fields of a 4-example batch that InputCounts reads, as the pipeline makes them."""
    lines = np.array(skipped_examples + [""] * (4 - len(skipped_examples)))
    return {"image": np.zeros((4, 2, 2, 1)), "index": np.arange(4, dtype=np.int32),
            "skipped": np.array([len([n for n in x.split("\n") if n]) for x in lines], np.int32),
            "skipped_examples": lines, "regions_cut": np.full(4, regions_cut, np.int32),
            "regions_without_caption": np.zeros(4, np.int32)}


def test_bad_example_counts_keep_a_run_total_across_logs_and_resumes():
    counts = train.InputCounts(max_bad_fraction=0.5)
    batch = _bookkeeping(["src[3]: ImageDecodeError: /d/3.png"], regions_cut=1)
    counts.add(batch)
    assert set(batch) == {"image"}  # the bookkeeping fields are not model inputs
    assert counts.log_metrics() == {"bad_examples": 1, "bad_examples_total": 1,
                                    "regions_beyond_max_regions": 4,
                                    "regions_without_caption": 0}
    counts.add(_bookkeeping([]))
    # A skip at the first step still shows in the total of a later logged step.
    assert counts.log_metrics()["bad_examples"] == 0 and counts.totals()[
        "bad_examples_total"] == 1
    counts.add(_bookkeeping(["src[3]: ImageDecodeError: /d/3.png\nsrc[9]: OSError: /d/9.png"]))
    saved = counts.state()
    assert saved["bad_examples_total"] == 3 and saved["bad_examples_seen"] == [
        "src[3]: ImageDecodeError: /d/3.png", "src[9]: OSError: /d/9.png"]
    resumed = train.InputCounts(json.loads(json.dumps(saved)), max_bad_fraction=0.5)
    resumed.add(_bookkeeping(["src[9]: OSError: /d/9.png"]))
    assert resumed.log_metrics()["bad_examples"] == 1
    assert resumed.totals()["bad_examples_total"] == 4
    assert resumed.summary() == (
        "bad data:    4 bad example(s) skipped in training (within data.max_bad_fraction = "
        "50.0%), 2 distinct:\n  src[3]: ImageDecodeError: /d/3.png\n  src[9]: OSError: /d/9.png")
    assert train.InputCounts().summary() == "bad data:    no example skipped in training"


def test_run_counters_are_saved_with_the_checkpoint(tmp_path):
    checkpointer = ckpt.Checkpointer(str(tmp_path), 1, 2)
    state = {"step": jnp.zeros((), jnp.int32)}
    checkpointer.save(1, state)  # a checkpoint without counters (as older runs wrote them)
    checkpointer.save(2, state, counters=lambda: {"bad_examples_total": 3,
                                                  "bad_examples_seen": ["a[1]: x"]})
    checkpointer.wait_until_finished()
    assert checkpointer.restore_counters() == {"bad_examples_total": 3,
                                               "bad_examples_seen": ["a[1]: x"]}
    assert checkpointer.restore_counters(1) == {}
    checkpointer.close()


def test_checkpoint_from_one_device_restores_on_eight_and_back(tmp_path):
    """The trainer's restore path (an abstract state carrying this run's shardings) across
    meshes: a one-device checkpoint restores on 8 devices sharded data x fsdp = 2 x 4, and a
    checkpoint of that run restores on one device again, every value as saved. (Training on
    either side of a restore: test_resume_is_bit_identical; on 8 devices: the roi variant.)"""
    config = smoke()
    model = train.build_model(config.model)
    tx, _ = optim.make_optimizer(config)
    checkpointer = ckpt.Checkpointer(str(tmp_path), 1, 3)

    def fresh(devices, fsdp):
        return train.init_state(model, tx, config, shd.make_mesh(devices, fsdp))[0]

    def moved(state):  # unlike any fresh state: restoring into the target cannot pass unread
        return jax.tree.map(lambda x: x + 1, state)

    saved_on_one = moved(fresh(1, 1))
    checkpointer.save(1, saved_on_one, force=True)
    checkpointer.wait_until_finished()
    on_eight = checkpointer.restore(ckpt.abstract_like(fresh(2, 4)))
    embedding = on_eight["params"]["text_encoder"]["token_embed"]["embedding"]
    assert len(embedding.sharding.device_set) == 8 and "fsdp" in str(embedding.sharding.spec)
    for x, y in zip(jax.tree.leaves(saved_on_one), jax.tree.leaves(on_eight)):
        np.testing.assert_array_equal(np.asarray(y), np.asarray(x))
    saved_on_eight = moved(on_eight)
    checkpointer.save(2, saved_on_eight, force=True)
    checkpointer.wait_until_finished()
    back = checkpointer.restore(ckpt.abstract_like(fresh(1, 1)))
    assert len(back["params"]["image_proj"]["kernel"].sharding.device_set) == 1
    assert int(back["step"]) == 2
    for x, y in zip(jax.tree.leaves(saved_on_eight), jax.tree.leaves(back)):
        np.testing.assert_array_equal(np.asarray(y), np.asarray(x))
    checkpointer.close()


def test_auto_dtype_resolves_to_the_backends_faster_one(monkeypatch):
    from configs.base import get_config as base_config
    from rmc_jax.models import layers

    config = base_config("roi")
    assert config.model.vision.dtype == config.model.text.dtype == "auto"
    assert base_config("smoke").model.vision.dtype == "float32"  # tests: same numbers anywhere
    for units, expected in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(layers, "_cpu_has_bf16_units", lambda units=units: units)
        resolved = train.resolve_compute_dtypes(config)
        assert resolved.model.vision.dtype == resolved.model.text.dtype == expected
        assert config.model.vision.dtype == "auto"  # a copy; the user's config is untouched
    pinned = base_config("roi,dtype=float32")
    assert train.resolve_compute_dtypes(pinned) is pinned


def test_mfu_peak_is_measured_in_the_towers_dtypes_before_input_workers_start(tmp_path,
                                                                             monkeypatch):
    """On CPU the peak is a measured matmul: in float32 it is a quarter of the bf16 figure on a
    CPU with bf16 units (a bf16 step's MFU then reads about 1), and input worker processes
    measuring beside it lower it further."""
    events = []

    class Measured(Exception):
        pass

    def peak_flops(devices=None, compute_dtypes=()):
        events.append(("peak", sorted(str(d) for d in compute_dtypes)))
        raise Measured

    prefetch = train.pipe.prefetch
    monkeypatch.setattr(train.flops, "peak_flops", peak_flops)
    monkeypatch.setattr(train.pipe, "prefetch",
                        lambda *a, **k: events.append(("workers", None)) or prefetch(*a, **k))
    config = smoke()
    config.model.vision.dtype = "bfloat16"
    with pytest.raises(Measured):
        train.train(config, str(tmp_path))
    assert events == [("peak", ["bfloat16", "float32"])]


def test_distillation_concepts_have_no_sides_by_default(tmp_path):
    names = ("nodule", "pleural_effusion", "no_finding")
    assert train.concept_prompts(names) == ["nodule", "pleural effusion"]
    # 'No Finding' is no concept in any spelling (it would become "no finding" otherwise).
    assert train.concept_prompts(("nodule", "No finding")) == ["nodule"]
    assert train.concept_prompts(names, "findings_and_sides") == [
        "nodule", "right nodule", "left nodule", "pleural effusion", "right pleural effusion",
        "left pleural effusion"]
    with pytest.raises(ValueError, match="teacher.concepts"):
        train.train(smoke(**{"teacher.concepts": "sides"}), str(tmp_path))


def test_head_teacher_scores_regions_as_the_student_embeds_them():
    """teacher.regions='head': the teacher's logits are its region head's embeddings (RoIAlign on
    its patch grid) against the concepts -- with the EMA at its start (the params) exactly the
    student's region logits on every real region; the crop teacher scores something else."""
    config = smoke(**{"teacher.regions": "head"})
    step, state, batch, concepts = _fixed_batch_setup(config, shd.make_mesh(1, 1))
    model = train.build_model(config.model)
    params = state["params"]
    head = jax.jit(objective.region_teacher(config, model))(
        params, batch["image"], batch["boxes"], concepts)
    apply = functools.partial(model.apply, {"params": params})
    regions = apply(batch["image"], batch["boxes"], batch["box_mask"],
                    method=train.RegionCLIP.encode_regions)
    student = jnp.einsum("bre,te->brt", regions, apply(*concepts,
                                                        method=train.RegionCLIP.encode_text))
    real = np.asarray(batch["box_mask"], bool)
    assert real.sum() >= 8
    np.testing.assert_allclose(np.asarray(head)[real], np.asarray(student)[real], atol=1e-5)
    crop_config = smoke(**{"teacher.regions": "crop"})
    crop = jax.jit(objective.region_teacher(crop_config, model))(
        params, batch["image"], batch["boxes"], concepts)
    assert np.abs(np.asarray(crop)[real] - np.asarray(head)[real]).max() > 1e-2
    _, metrics = step(state, batch, concepts, None)
    assert np.isfinite(float(metrics["distill"])) and float(metrics["distill_kept"]) > 0


def test_auto_teacher_regions_use_the_head_of_an_rmc_jax_teacher_and_crops_of_a_clip():
    assert get_config("roi").teacher.regions == "auto"
    assert objective.teacher_regions(smoke()) == "head"
    assert objective.teacher_regions(smoke(**{"teacher.source": "checkpoint"})) == "head"
    assert objective.teacher_regions(smoke(**{"teacher.source": "hf"})) == "crop"
    assert objective.teacher_regions(smoke(**{"teacher.regions": "crop"})) == "crop"


@pytest.mark.parametrize("fixed", [False, True])
def test_fixed_concepts_keep_distillation_out_of_the_text_tower(fixed):
    """teacher.fixed_concepts: the distillation term's gradient reaches the text tower (through
    the student's concept embeddings) only when the concepts are not fixed; the image tower
    and region head learn from it either way."""
    config = smoke(**{"teacher.fixed_concepts": fixed, "loss.global_weight": 0.0,
                      "loss.sentence_weight": 0.0, "loss.roi_weight": 0.0,
                      "loss.neg_weight": 0.0})
    _, state, batch, concepts = _fixed_batch_setup(config, shd.make_mesh(1, 1))
    model = train.build_model(config.model)
    teacher = objective.region_teacher(config, model)
    # A teacher that disagrees with the student: the params of another initialisation.
    other, _ = train.init_state(model, optim.make_optimizer(config)[0],
                                smoke(seed=1), shd.make_mesh(1, 1))
    teacher_logits = jax.jit(teacher)(other["params"], batch["image"], batch["boxes"], concepts)
    loss_fn = functools.partial(objective.batch_losses, model=model, config=config,
                                mesh=shd.make_mesh(1, 1), no_finding=SYNTHETIC_NO_FINDING)
    grads = jax.jit(jax.grad(lambda p: loss_fn(p, teacher_logits, batch, concepts, 0)[0]))(
        state["params"])
    norm = lambda tree: float(optax.tree.norm(tree))  # noqa: E731
    assert norm(grads["image_encoder"]) > 0 and norm(grads["region_proj"]) > 0
    assert (norm(grads["text_encoder"]) == 0) == fixed
