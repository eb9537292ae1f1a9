"""Every real format end to end through the command line, each copy with one corrupt file.

The fixture builders write an official-layout copy of each registered format (and a TFDS
copy made by tools/prepare_data.py) and one file of each is corrupted. One
``python -m rmc_jax.main`` run trains the smoke model on the mixture of all nine formats long
enough to read every example (so each format's bad training example is met) and evaluates on
the mixture: it must finish, name each bad example once, keep the run total of skips in
metrics.jsonl and leave them out of the evaluation. Then ``python -m rmc_jax.main --mode=eval``
evaluates that model on each format's evaluation split alone: the bad example is left out and
counted (``eval/skipped``), and results.json holds the retrieval / zero-shot / grounding
families exactly when the readable examples support them (reports for retrieval, a class with
a known positive and a known negative for zero-shot AUROC, captioned boxes for grounding).
A last run over the bad-data budget stops before its first step with the list.

Cost: one training run (tracing and compiling the train step is most of a run), then one
cheap evaluation per format; the runs share a JAX compilation cache, and xdist workers share
the training run. Distillation is off: its concept prompts would make the train step depend on
the label set. The fixtures' evaluation splits are tiny: where a format's official evaluation
split holds a single image the runs evaluate on its train split (or 'all'), so that one image
can be bad and others still be scored.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
from filelock import FileLock

from fixtures import cxr_formats_a as fx_a
from fixtures import cxr_formats_b as fx_b

ROOT = os.path.join(os.path.dirname(__file__), os.pardir)
sys.path.insert(0, ROOT)
from configs.base import get_config  # noqa: E402

from rmc_jax import evaluate  # noqa: E402
from rmc_jax.data.sources import get_source  # noqa: E402
from rmc_jax.data.sources.reports import model_text  # noqa: E402

# The smoke model; a bad-data budget that one bad image among two passes (the fixtures' splits
# hold 1-13 images).
COMMON = ("--config=configs/base.py:smoke", "--config.loss.distill_weight=0",
          "--config.progress_bar=off", "--config.data.eval_size=0",
          "--config.data.max_bad_fraction=0.75", "--config.evals.region_mode=head")


@dataclasses.dataclass
class Copy:
    """One format's copy: where it is, its options, its evaluation split, the corrupt file."""

    name: str
    root: str
    eval_split: str
    corrupt: str              # the file made unreadable
    in_train: bool            # the train split holds it
    in_eval: bool             # the evaluation split holds it
    options: dict = dataclasses.field(default_factory=dict)  # data.source_options


def corrupt(path: str) -> str:
    """Keep the file's first 64 bytes (its magic number and a piece of header): a truncated
    image, DICOM or record shard that no reader can decode."""
    with open(path, "rb") as handle:
        head = handle.read(64)
    with open(path, "wb") as handle:
        handle.write(head)
    return path


def _mimic(tmp):
    fx_a.write_mimic_cxr(f"{tmp}/mimic", reports_root=f"{tmp}/mimic-reports")
    bad = corrupt(f"{tmp}/mimic/files/p10/p10000032/s50414267/d1-pa.jpg")
    # validate and test hold one image each: evaluate on train (PA, lateral, AP).
    return Copy("mimic_cxr", f"{tmp}/mimic", "train", bad, True, True,
                {"reports_root": f"{tmp}/mimic-reports", "views": "all"})


def _chexpert(tmp):
    copy = fx_a.write_chexpert(f"{tmp}/chexpert", per_class=2)
    bad = corrupt(os.path.join(f"{tmp}/chexpert", copy["train"][0][0]))
    return Copy("chexpert", f"{tmp}/chexpert", "train", bad, True, True)  # valid: 1 image


def _ms_cxr(tmp):
    fx_a.write_mimic_cxr(f"{tmp}/ms-images", reports_root=f"{tmp}/ms-reports")
    fx_a.write_ms_cxr(f"{tmp}/ms_cxr", images_root=f"{tmp}/ms-images")
    bad = corrupt(f"{tmp}/ms-images/files/p11/p11000011/s52000001/ms2.jpg")  # the test image
    return Copy("ms_cxr", f"{tmp}/ms_cxr", "all", bad, False, True,
                {"images_root": f"{tmp}/ms-images", "reports_root": f"{tmp}/ms-reports"})


def _vindr(tmp):
    copy = fx_b.write_vindr(f"{tmp}/vindr")
    bad = corrupt(f"{tmp}/vindr/train/{copy['mono1']}.dicom")
    return Copy("vindr_cxr", f"{tmp}/vindr", "train", bad, True, True)  # test: 1 image


def _imagenome(tmp):
    copy = fx_b.write_imagenome(f"{tmp}/imagenome", f"{tmp}/imagenome-images",
                                reports_root=f"{tmp}/imagenome-reports")
    bad = corrupt(f"{tmp}/imagenome-images/files/p11/p11000011/s51000011/{copy['gold']}.jpg")
    # The train split keeps its gold-standard image here, so it holds two.
    return Copy("chest_imagenome", f"{tmp}/imagenome", "train", bad, True, True,
                {"images_root": f"{tmp}/imagenome-images",
                 "reports_root": f"{tmp}/imagenome-reports", "exclude_gold": False})


def _rsna(tmp):
    copy = fx_a.write_rsna(f"{tmp}/rsna")
    patient = list(copy["patients"])[1]
    bad = corrupt(f"{tmp}/rsna/stage_2_train_images/{patient}.dcm")
    return Copy("rsna_pneumonia", f"{tmp}/rsna", "all", bad, True, True)


def _iu_xray(tmp):
    fx_b.write_iu_xray(f"{tmp}/iu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = get_source("iu_xray", f"{tmp}/iu", "train")[0].example_id
    bad = corrupt(f"{tmp}/iu/NLMCXR_png/{first}.png")
    return Copy("iu_xray", f"{tmp}/iu", "all", bad, True, True)


def _nih(tmp):
    fx_b.write_nih(f"{tmp}/nih")
    bad = corrupt(f"{tmp}/nih/images_001/images/00000001_000.png")  # train
    return Copy("nih_cxr14", f"{tmp}/nih", "all", bad, True, True)


def _tfds(tmp):
    """tools/prepare_data.py's TFDS copy of IU X-ray, one record per train shard; one shard
    corrupt (its record unreadable, text and image); the 'all' split is whole."""
    fx_b.write_iu_xray(f"{tmp}/iu-source")
    spec = importlib.util.spec_from_file_location(
        "prepare_data", os.path.join(ROOT, "tools", "prepare_data.py"))
    prepare_data = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prepare_data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        copy = prepare_data.prepare("iu_xray", f"{tmp}/iu-source", f"{tmp}/tfds",
                                    splits=("train", "all"), shards=3, log=lambda line: None,
                                    warn=lambda line: None)
    bad = corrupt(os.path.join(copy["path"], copy["shards"]["train"][0]))
    return Copy(f"tfds:{copy['name']}", f"{tmp}/tfds", "all", bad, True, False)


BUILDERS = {"mimic_cxr": _mimic, "chexpert": _chexpert, "ms_cxr": _ms_cxr, "vindr_cxr": _vindr,
            "chest_imagenome": _imagenome, "rsna_pneumonia": _rsna, "iu_xray": _iu_xray,
            "nih_cxr14": _nih, "tfds:rmc_iu_xray": _tfds}


def options(copies) -> str:
    """data.source_options aimed at each dataset by name."""
    return ",".join(f"{c.name}.{key}={value}" for c in copies for key, value in c.options.items())


def run_cli(workdir: str, cache: str, *flags: str) -> subprocess.CompletedProcess:
    """``python -m rmc_jax.main`` with the smoke model on one CPU device, as a user runs it (not
    the 8 devices the test process simulates), sharing the JAX compilation cache (a size limit
    turns on JAX's file lock: xdist workers use it at once)."""
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_COMPILATION_CACHE_MAX_SIZE=str(2 ** 30), XLA_FLAGS="")
    return subprocess.run([sys.executable, "-m", "rmc_jax.main", *COMMON,
                           f"--workdir={workdir}", *flags], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env=env)


@pytest.fixture(scope="session")
def shared(tmp_path_factory):
    """A folder every xdist worker of this session sees (the JAX cache, the training run)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def trained(shared):
    """The copies and one training run on their mixture (made once per session, under a file
    lock, whichever worker comes first): (copies, workdir, completed process, mixture)."""
    root = shared / "bad-data-cli"
    with FileLock(str(shared / "bad-data-cli.lock")):
        copies = None
        if (root / "done.json").exists():
            done = json.loads((root / "done.json").read_text())
            copies = [Copy(**c) for c in done["copies"]]
            result = subprocess.CompletedProcess([], done["returncode"], done["stdout"],
                                                 done["stderr"])
        if copies is None:
            shutil.rmtree(root, ignore_errors=True)
            copies = [build(str(root / "data" / name)) for name, build in BUILDERS.items()]
            # 16 steps of 8 read one mixture epoch (9 datasets x 13 positions) and more.
            result = run_cli(str(root / "run"), str(shared / "jax-compilation-cache"),
                             "--config.total_steps=16", "--config.log_every=4",
                             "--config.checkpoint_every=100",
                             "--config.data.train=" + ",".join(c.name for c in copies),
                             "--config.data.root=" + ",".join(f"{c.name}={c.root}"
                                                              for c in copies),
                             "--config.data.eval=" + ",".join(c.name for c in copies),
                             "--config.data.eval_split=train", "--config.evals.report=False",
                             f"--config.data.source_options={options(copies)}")
            (root / "done.json").write_text(json.dumps({
                "copies": [dataclasses.asdict(c) for c in copies],
                "returncode": result.returncode, "stdout": result.stdout,
                "stderr": result.stderr}))
    mixture = dict(name=",".join(c.name for c in copies),
                   root=",".join(f"{c.name}={c.root}" for c in copies), eval_split="train",
                   options=options(copies))
    return copies, str(root / "run"), result, mixture


def readable_examples(name: str, root: str, split: str, source_options: str) -> list:
    """The evaluation split's examples that can be read, opened as the CLI opens it."""
    config = get_config("smoke")
    config.data.update(eval=name, eval_root=root, eval_split=split, eval_size=0,
                       source_options=source_options)
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


def check_families(results: dict, examples: list) -> dict[str, bool]:
    """results.json holds retrieval / zero-shot / grounding exactly when the readable examples
    support them; retrieval counts the examples with and without report text."""
    sections = get_config("smoke").data.report_sections  # what the text tower reads
    reports = sum(bool(model_text(e.report, sections).strip()) for e in examples)
    known = np.stack([e.label_mask.astype(bool) for e in examples])
    positive = np.stack([e.labels for e in examples]) == 1
    expected = {
        "retrieval/image_to_report_R@1": reports >= 2,
        "zeroshot/auroc_mean": bool(((known & positive).any(0)
                                     & (known & ~positive).any(0)).any()),
        "grounding/pointing_accuracy": any(str(c).strip() for e in examples for c in e.captions),
    }
    expected["regions/region_to_caption_R@1"] = expected["grounding/pointing_accuracy"]
    assert {key: key in results for key in expected} == expected, sorted(results)
    assert results["eval/examples"] == len(examples)
    assert results["retrieval/examples"] == reports
    assert results["retrieval/left_out_no_report"] == len(examples) - reports
    return expected


def test_training_on_every_format_names_each_bad_example_once(trained):
    copies, workdir, result, mixture = trained
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    in_train = [c for c in copies if c.in_train]
    # metrics.jsonl: the windows add up to the run total; every bad example was met.
    lines = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [line["step"] for line in lines] == [4, 8, 12, 16]
    assert np.cumsum([line["bad_examples"] for line in lines]).tolist() == [
        line["bad_examples_total"] for line in lines]
    total = int(lines[-1]["bad_examples_total"])
    assert total >= len(in_train)
    summary = result.stdout[result.stdout.index("bad data:"):].splitlines()
    assert summary[0] == (f"bad data:    {total} bad example(s) skipped in training (within "
                          f"data.max_bad_fraction = 75.0%), {len(in_train)} distinct:")
    listed = summary[1:1 + len(in_train)]
    for copy in in_train:
        assert sum(os.path.basename(copy.corrupt) in line for line in listed) == 1, listed
    # The evaluation on the mixture's train splits: each bad example left out once.
    results = json.load(open(os.path.join(workdir, "eval", "results.json")))
    assert results["eval/skipped"] == len(in_train)
    check_families(results, readable_examples(mixture["name"], mixture["root"], "train",
                                              mixture["options"]))


@pytest.mark.parametrize("format_name", list(BUILDERS))
def test_evaluation_of_each_format_leaves_its_bad_example_out(format_name, trained, shared,
                                                              tmp_path):
    copies, workdir, result, mixture = trained
    assert result.returncode == 0, "the training run failed: see the test above"
    copy = next(c for c in copies if c.name == format_name)
    run = str(tmp_path / "run")
    shutil.copytree(workdir, run, ignore=shutil.ignore_patterns("eval", "tensorboard"))
    report = format_name == "ms_cxr"  # the report's figures once: MS-CXR, non-square images
    evaluated = run_cli(run, str(shared / "jax-compilation-cache"), "--mode=eval",
                        f"--config.data.train={mixture['name']}",
                        f"--config.data.eval={copy.name}", f"--config.data.eval_root={copy.root}",
                        f"--config.data.eval_split={copy.eval_split}",
                        f"--config.data.source_options={mixture['options']}",
                        f"--config.evals.report={report}")
    assert evaluated.returncode == 0, (evaluated.stdout + evaluated.stderr)[-4000:]
    results = json.load(open(os.path.join(run, "eval", "results.json")))
    assert results["eval/skipped"] == float(copy.in_eval)
    bad_file = os.path.basename(copy.corrupt)
    if copy.in_eval:
        assert "eval/skipped=1" in evaluated.stdout and bad_file in evaluated.stderr
    expected = check_families(results, readable_examples(
        copy.name, copy.root, copy.eval_split, mixture["options"]))
    if report:
        text = open(os.path.join(run, "eval", "report.md")).read()
        assert "**1 bad example(s) left out of `eval`**" in text and bad_file in text
        assert not expected["retrieval/image_to_report_R@1"]
        assert "- `retrieval`: not computed: 1 of the 1 examples have report text" in text
        # The eval split got its source options: MS-CXR's report of its one readable image.
        assert results["retrieval/examples"] == 1


def test_a_run_over_the_bad_data_budget_stops_with_the_list(shared, tmp_path):
    """One of NIH's two train images is corrupt: half the examples read, over a 10% budget
    (judged from the 10th example read on). The run stops before its first step, naming it."""
    copy = _nih(str(tmp_path / "data"))
    result = run_cli(str(tmp_path / "run"), str(shared / "jax-compilation-cache"),
                     f"--config.data.train={copy.name}", f"--config.data.root={copy.root}",
                     "--config.data.max_bad_fraction=0.1")
    assert result.returncode != 0
    error = result.stderr[result.stderr.rindex("BadDataError"):]
    assert "data.max_bad_fraction = 10.0%" in error and "(1 distinct)" in error
    assert "nih_cxr14[0]: ImageDecodeError: " in error and "00000001_000.png" in error
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == ""  # no step was taken
