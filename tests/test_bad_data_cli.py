"""Every real format end to end through the command line with one corrupt file.

For each registered format (and a mixture) an official-layout copy is written by the fixture
builders, one of its files is corrupted, and ``python -m rmc_jax.main`` trains the smoke model
for two steps and evaluates: the run must finish, name the bad example in training and/or
evaluation as its split holds it (exactly one distinct bad example), keep the run total of
skips in metrics.jsonl, and write results whose retrieval / zero-shot / grounding families are
present exactly when the readable evaluation examples support them (reports for retrieval, a
class with known positives and negatives for zero-shot AUROC, captioned boxes for grounding).

Cost: every format compiles the same train step and evaluation encoders, so the runs share a
JAX compilation cache (the first run compiles, the rest load). Distillation is off: its
concept prompts follow each format's label set and would make every train step a new program.
The fixtures' evaluation splits are tiny; where a format's official evaluation split holds a
single image, the run evaluates on its train split (or 'all') so that one image can be bad and
others still be scored.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

from fixtures import cxr_formats_a as fx_a
from fixtures import cxr_formats_b as fx_b

ROOT = os.path.join(os.path.dirname(__file__), os.pardir)
sys.path.insert(0, ROOT)
from configs.base import get_config  # noqa: E402

from rmc_jax import evaluate  # noqa: E402
from rmc_jax.data.sources.reports import model_text  # noqa: E402

# Two train steps of the smoke model, then evaluation of the whole evaluation split. The
# fixtures' train splits hold 1-13 images, one of them bad: a budget that one in two passes.
COMMON = ("--config=configs/base.py:smoke", "--config.total_steps=2", "--config.log_every=1",
          "--config.checkpoint_every=100", "--config.loss.distill_weight=0",
          "--config.progress_bar=off", "--config.data.eval_size=0",
          "--config.data.max_bad_fraction=0.75", "--config.evals.region_mode=head")


@dataclasses.dataclass
class Case:
    """One format's copy: what the CLI is told, and the corrupt file."""

    name: str                 # data.train and data.eval
    root: str                 # data.root (and eval root)
    eval_split: str
    corrupt: str              # the file made unreadable
    in_train: bool            # the train split holds it
    in_eval: bool             # the evaluation split holds it
    options: str = ""         # data.source_options
    report: bool = False      # write eval/report.md (once: it costs the figures)


def corrupt(path: str) -> str:
    """Keep the file's first 64 bytes (its magic number and a piece of header): a truncated
    image, DICOM or record shard that no reader can decode."""
    with open(path, "rb") as handle:
        head = handle.read(64)
    with open(path, "wb") as handle:
        handle.write(head)
    return path


def _mimic(tmp):
    fx_a.write_mimic_cxr(f"{tmp}/mimic", reports_root=f"{tmp}/reports")
    bad = corrupt(f"{tmp}/mimic/files/p10/p10000032/s50414267/d1-pa.jpg")
    # validate and test hold one image each: evaluate on train (PA, lateral, AP).
    return Case("mimic_cxr", f"{tmp}/mimic", "train", bad, True, True,
                f"reports_root={tmp}/reports,views=all")


def _chexpert(tmp):
    copy = fx_a.write_chexpert(f"{tmp}/chexpert", per_class=2)
    bad = corrupt(os.path.join(f"{tmp}/chexpert", copy["train"][0][0]))
    return Case("chexpert", f"{tmp}/chexpert", "train", bad, True, True)  # valid: 1 image


def _ms_cxr(tmp):
    fx_a.write_mimic_cxr(f"{tmp}/mimic", reports_root=f"{tmp}/reports")
    fx_a.write_ms_cxr(f"{tmp}/ms_cxr", images_root=f"{tmp}/mimic")
    bad = corrupt(f"{tmp}/mimic/files/p11/p11000011/s52000001/ms2.jpg")  # the test image
    return Case("ms_cxr", f"{tmp}/ms_cxr", "all", bad, False, True,
                f"images_root={tmp}/mimic,reports_root={tmp}/reports", report=True)


def _vindr(tmp):
    copy = fx_b.write_vindr(f"{tmp}/vindr")
    bad = corrupt(f"{tmp}/vindr/train/{copy['mono1']}.dicom")
    return Case("vindr_cxr", f"{tmp}/vindr", "train", bad, True, True)  # test: 1 image


def _imagenome(tmp):
    copy = fx_b.write_imagenome(f"{tmp}/imagenome", f"{tmp}/mimic",
                                reports_root=f"{tmp}/reports")
    bad = corrupt(f"{tmp}/mimic/files/p11/p11000011/s51000011/{copy['gold']}.jpg")
    # The train split keeps its gold-standard image here, so it holds two.
    return Case("chest_imagenome", f"{tmp}/imagenome", "train", bad, True, True,
                f"images_root={tmp}/mimic,reports_root={tmp}/reports,exclude_gold=False")


def _rsna(tmp):
    copy = fx_a.write_rsna(f"{tmp}/rsna")
    patient = list(copy["patients"])[1]
    bad = corrupt(f"{tmp}/rsna/stage_2_train_images/{patient}.dcm")
    return Case("rsna_pneumonia", f"{tmp}/rsna", "all", bad, True, True)


def _iu_xray(tmp):
    fx_b.write_iu_xray(f"{tmp}/iu")
    from rmc_jax.data.sources import get_source

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = get_source("iu_xray", f"{tmp}/iu", "train")[0].example_id
    bad = corrupt(f"{tmp}/iu/NLMCXR_png/{first}.png")
    return Case("iu_xray", f"{tmp}/iu", "all", bad, True, True)


def _nih(tmp):
    fx_b.write_nih(f"{tmp}/nih")
    bad = corrupt(f"{tmp}/nih/images_001/images/00000001_000.png")  # train
    return Case("nih_cxr14", f"{tmp}/nih", "all", bad, True, True)


def _array_record(tmp):
    fx_b.write_nih(f"{tmp}/nih")
    spec = importlib.util.spec_from_file_location(
        "prepare_data", os.path.join(ROOT, "tools", "prepare_data.py"))
    prepare_data = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prepare_data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepare_data.prepare("nih_cxr14", f"{tmp}/nih", f"{tmp}/records", splits=("train", "all"),
                             shards=2, log=lambda line: None, warn=lambda line: None)
    # One record per train shard: the corrupt shard holds exactly one example.
    bad = corrupt(f"{tmp}/records/train-00000-of-00002.array_record")
    return Case("array_record", f"{tmp}/records", "all", bad, True, False)


def _mixture(tmp):
    fx_b.write_nih(f"{tmp}/nih")
    fx_b.write_iu_xray(f"{tmp}/iu")
    bad = corrupt(f"{tmp}/nih/images_001/images/00000001_000.png")
    return Case("nih_cxr14:1,iu_xray:2", f"nih_cxr14={tmp}/nih,iu_xray={tmp}/iu", "all", bad,
                True, True)


CASES = {"mimic_cxr": _mimic, "chexpert": _chexpert, "ms_cxr": _ms_cxr, "vindr_cxr": _vindr,
         "chest_imagenome": _imagenome, "rsna_pneumonia": _rsna, "iu_xray": _iu_xray,
         "nih_cxr14": _nih, "array_record": _array_record, "mixture": _mixture}


@pytest.fixture(scope="session")
def compilation_cache(tmp_path_factory):
    """One JAX compilation cache for every run of the session (shared by xdist workers)."""
    base = tmp_path_factory.getbasetemp()
    base = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    return str(base / "jax-compilation-cache")


def run_cli(case: Case, workdir: str, cache: str, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "rmc_jax.main", *COMMON, f"--workdir={workdir}",
               f"--config.data.train={case.name}", f"--config.data.root={case.root}",
               f"--config.data.eval={case.name}", f"--config.data.eval_split={case.eval_split}",
               f"--config.evals.report={case.report}", *extra]
    if case.options:
        command.append(f"--config.data.source_options={case.options}")
    # A lock-guarded cache (a size limit turns on JAX's file lock): xdist workers share it.
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_COMPILATION_CACHE_MAX_SIZE=str(2 ** 30))
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=env)


def readable_evaluation_examples(case: Case) -> list:
    """The evaluation split's examples that can be read, opened as the CLI opens it."""
    config = get_config("smoke")
    config.data.update(train=case.name, root=case.root, eval=case.name,
                       eval_split=case.eval_split, eval_size=0, source_options=case.options)
    source = evaluate.eval_source(config)
    examples = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(len(source)):
            try:
                examples.append(source[i])
            except Exception:  # noqa: BLE001 -- the corrupt file, whatever its reader raises
                continue
    return examples


def expected_families(examples) -> dict[str, bool]:
    """Which metric families the readable evaluation examples support."""
    reports = sum(bool(model_text(e.report, "findings_impression").strip()) for e in examples)
    captioned = any(str(c).strip() for e in examples for c in e.captions)
    known = np.stack([e.label_mask.astype(bool) for e in examples])
    positive = np.stack([e.labels for e in examples]) == 1
    both = ((known & positive).any(0) & (known & ~positive).any(0)).any()
    return {"retrieval": reports >= 2, "zeroshot": bool(both), "grounding": captioned}


FAMILY_METRIC = {"retrieval": "retrieval/image_to_report_R@1", "zeroshot": "zeroshot/auroc_mean",
                 "grounding": "grounding/pointing_accuracy"}


@pytest.mark.parametrize("format_name", list(CASES))
def test_cli_run_with_one_corrupt_file_finishes_and_reports_it(format_name, tmp_path,
                                                               compilation_cache):
    case = CASES[format_name](str(tmp_path / "data"))
    workdir = str(tmp_path / "run")
    result = run_cli(case, workdir, compilation_cache)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    bad_file = os.path.basename(case.corrupt)

    # Training: the bad example is named once, and its skips add up in metrics.jsonl.
    lines = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [line["step"] for line in lines] == [1, 2]
    assert np.cumsum([line["bad_examples"] for line in lines]).tolist() == [
        line["bad_examples_total"] for line in lines]
    summary = result.stdout[result.stdout.index("bad data:"):].splitlines()
    if case.in_train:
        assert lines[-1]["bad_examples_total"] >= 1
        assert summary[0].startswith(f"bad data:    {int(lines[-1]['bad_examples_total'])} bad "
                                     "example(s) skipped in training") and \
            summary[0].endswith(", 1 distinct:"), summary
        assert bad_file in summary[1], summary
    else:
        assert lines[-1]["bad_examples_total"] == 0
        assert summary[0] == "bad data:    no example skipped in training"

    # Evaluation: the readable examples only, the bad one counted; the families present
    # exactly when the data supports them.
    results = json.load(open(os.path.join(workdir, "eval", "results.json")))
    examples = readable_evaluation_examples(case)
    assert results["eval/skipped"] == float(case.in_eval)
    assert results["eval/examples"] == len(examples)
    expected = expected_families(examples)
    present = {family: metric in results for family, metric in FAMILY_METRIC.items()}
    assert present == expected, (present, expected, sorted(results))
    assert ("regions/region_to_caption_R@1" in results) == expected["grounding"]
    with_report = sum(bool(model_text(e.report, "findings_impression").strip())
                      for e in examples)
    assert results["retrieval/examples"] == with_report
    assert results["retrieval/left_out_no_report"] == len(examples) - with_report
    if case.in_eval:
        assert "eval/skipped=1" in result.stdout and bad_file in result.stderr
    if case.report:
        text = open(os.path.join(workdir, "eval", "report.md")).read()
        assert "**1 bad example(s) left out of `eval`**" in text and bad_file in text
        if not expected["retrieval"]:
            assert "- `retrieval`: not computed:" in text


def test_cli_run_over_the_bad_data_budget_stops_with_the_list(tmp_path, compilation_cache):
    """One of NIH's two train images is corrupt: half the examples read, over a 10% budget
    (judged from the 10th example read on). The run stops before its first step, naming it."""
    case = _nih(str(tmp_path / "data"))
    result = run_cli(case, str(tmp_path / "run"), compilation_cache,
                     "--config.data.max_bad_fraction=0.1")
    assert result.returncode != 0
    error = result.stderr[result.stderr.rindex("BadDataError"):]
    assert "data.max_bad_fraction = 10.0%" in error and "(1 distinct)" in error
    assert "nih_cxr14[0]: ImageDecodeError: " in error and "00000001_000.png" in error
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == ""  # no step was taken
