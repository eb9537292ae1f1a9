"""The ablation script's aggregation, intervals, table and target checks (no training here)."""

import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "experiments"))
import ablation  # noqa: E402


def result(auroc, acc=0.75, r5=0.45, r1=0.70, lat=0.98, lesion=0.5, point=0.65, crop=None):
    out = {"zeroshot/auroc_mean": auroc, "zeroshot/accuracy_single_label": acc,
           "retrieval/image_to_report_R@5": r5, "retrieval/report_to_image_R@5": r5,
           "regions/region_to_caption_semantic_R@1": r1,
           "hard_negatives/accuracy/laterality": lat, "lesion_retrieval/R@5": lesion,
           "grounding/pointing_accuracy": point}
    if crop is not None:  # the crop baseline's region scores
        out.update({"regions_crop/region_to_caption_semantic_R@1": crop,
                    "hard_negatives_crop/accuracy/laterality": crop,
                    "lesion_retrieval_crop/R@5": crop})
    return out


def fake_runs():
    return {
        "roi": {"0": result(0.92, r1=0.70), "1": result(0.94, r1=0.62),
                "2": result(0.93, r1=0.66)},
        "global": {"0": result(0.90, r5=0.50, r1=0.05, lat=0.5, lesion=0.05, crop=0.30),
                   "1": result(0.91, r5=0.52, r1=0.07, lat=0.5, lesion=0.05, crop=0.34),
                   "2": result(0.92, r5=0.51, r1=0.06, lat=0.5, lesion=0.05, crop=0.32)},
        "medclip": {"0": result(0.95, r1=0.10, lat=0.6, lesion=0.1),
                    "1": result(0.80, r1=0.12, lat=0.6, lesion=0.1)},
    }


def test_t_quantiles_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 9, 30, 31, 45, 100, 1000):
        assert ablation.t_quantile(df) == pytest.approx(stats.t.ppf(0.975, df), abs=2e-4)
    with pytest.raises(ValueError, match="at least 2 values"):
        ablation.t_quantile(0)


def test_aggregate_mean_std_and_t_interval():
    summary = ablation.aggregate(fake_runs())
    entry = summary["roi"]["zeroshot/auroc_mean"]
    values = np.array([0.92, 0.94, 0.93])
    half = 4.3027 * values.std(ddof=1) / np.sqrt(3)
    assert entry["mean"] == pytest.approx(0.93) and entry["n"] == 3
    assert entry["std"] == pytest.approx(0.01)
    assert (entry["low"], entry["high"]) == (pytest.approx(0.93 - half), pytest.approx(0.93 + half))
    assert summary["global"]["regions_crop/region_to_caption_semantic_R@1"]["n"] == 3
    assert "regions_crop/region_to_caption_semantic_R@1" not in summary["roi"]
    single = ablation.aggregate({"roi": {"0": {"a": 0.5}}})["roi"]["a"]
    assert single["low"] == single["high"] == 0.5 and single["std"] == 0.0


def test_targets_absolute_and_paired_differences():
    rows = {t.what: t for t in ablation.targets(fake_runs())}
    assert rows["roi zero-shot AUROC (headline)"].value == pytest.approx(0.93)
    assert rows["roi zero-shot AUROC (headline)"].met is True
    assert rows["roi semantic region->caption R@1"].met is True          # 0.66 >= 0.60
    assert rows["roi laterality accuracy"].met is True                   # 0.98 >= 0.97
    # roi is behind global on image->report R@5 every seed (0.45 vs 0.50-0.52): the interval
    # of the paired difference stays below 0, so 'not worse' fails.
    behind = rows["roi - global, image->report R@5"]
    assert behind.value == pytest.approx(-0.06) and behind.high < 0 and behind.met is False
    # Ahead of global by a little on zero-shot AUROC: met.
    ahead = rows["roi - global, zero-shot AUROC"]
    assert ahead.value == pytest.approx(0.02) and ahead.met is True
    # medclip ran seeds 0 and 1 only: paired over those; a noisy baseline gives a wide
    # interval that reaches 0 although roi's mean is lower on seed 0.
    noisy = rows["roi - medclip, zero-shot AUROC"]
    assert noisy.value == pytest.approx(((0.92 - 0.95) + (0.94 - 0.80)) / 2)
    assert noisy.low < 0 < noisy.high and noisy.met is True
    # global's region scores: its crop baseline (mean 0.32) beats its head (0.06), per seed.
    region = rows["roi - global, semantic region->caption R@1"]
    assert region.value == pytest.approx(0.66 - 0.32) and region.met is True
    # ...while on laterality its head (0.5) beats its crop baseline (0.32).
    assert rows["roi - global, laterality accuracy"].value == pytest.approx(0.98 - 0.5)
    assert rows["roi - medclip, lesion description R@5"].value == pytest.approx(0.4)
    assert len(rows) == 6 + 2 * (4 + 3)


def test_targets_missing_variants_are_not_measured():
    rows = ablation.targets({"roi": fake_runs()["roi"]})
    assert all(t.value is None and t.met is None for t in rows if " - " in t.what)
    rows = ablation.targets({"roi": {"0": {}}})
    assert all(t.met is None for t in rows)


def test_markdown_table_headline_first_intervals_and_missing_metrics():
    runs = fake_runs()
    runs["global"]["0"]["run/wall_seconds"] = 100.0
    text = ablation.markdown(ablation.aggregate(runs), runs, "steps=10", [0, 1, 2])
    table = text.split("| metric | global | medclip | roi |\n|---|---|---|---|\n", 1)[1]
    assert table.startswith("| zero-shot AUROC, headline (CheXzero pos/neg prompt ensembles) |")
    first = table.split("\n", 1)[0]
    assert "| 0.930 [0.905, 0.955] |" in first and "0.910 [0.885, 0.935]" in first
    assert "| region->caption semantic R@1 (crop) | 0.320 [0.270, 0.370] | - | - |" in text
    assert "hard negatives: zone" not in text  # no run reports it
    assert "| wall time per run (s) | 100 | - | - |" in text
    assert "| roi - global, image->report R@5 | -0.060 [" in text
    assert "| >= 0 within the interval | no |" in text
    assert "| roi zero-shot AUROC (headline) | 0.930 | >= 0.90 | yes |" in text
    assert "config arguments: `steps=10` (10 steps). " in text and "flags for every run" not in text
    flagged = ablation.markdown(ablation.aggregate(runs), runs, "", [0], extra=[
        "--config.data.augment=True", "--config.data.workers=1"])
    default_steps = ablation.step_budget("")                     # configs/base.py's budget
    assert (f"config arguments: `(defaults)` ({default_steps} steps); flags for every run: "
            "`--config.data.augment=True --config.data.workers=1`. ") in flagged


# What today's evaluation writes besides the metrics a test is about.
COUNTED = {ablation.REGIONS_KEY: 0.0}


def finished_run(workdir, results: dict, prompts: dict | None = None) -> None:
    """A finished run's eval/results.json and, unless ``prompts`` is None, its
    eval/prompts.json (zero-shot scored with ``prompts``)."""
    os.makedirs(workdir / "eval", exist_ok=True)
    (workdir / "eval" / "results.json").write_text(json.dumps(results))
    if prompts is not None:
        (workdir / "eval" / "prompts.json").write_text(json.dumps({"zeroshot": prompts}))


def test_stale_results_are_refused(tmp_path):
    current = ablation.current_prompts()
    finished_run(tmp_path / "roi-seed0", {"zeroshot/auroc_mean": 0.7,
                                          "zeroshot/auroc_mean_posneg": 0.72, **COUNTED}, current)
    with pytest.raises(SystemExit, match="older rmc_jax"):
        ablation.run("roi", 0, "", str(tmp_path))
    finished_run(tmp_path / "roi-seed0", {"zeroshot/auroc_mean": 0.7,
                                          "zeroshot/auroc_mean_ensemble": 0.6, **COUNTED}, current)
    assert ablation.run("roi", 0, "", str(tmp_path))["zeroshot/auroc_mean"] == 0.7


@pytest.mark.parametrize("prompts", ["none recorded", "other prompts", "first regions only"])
def test_a_run_scored_with_other_prompts_is_evaluated_again(tmp_path, monkeypatch, prompts):
    """A finished run whose zero-shot task scored other prompts than today's defaults (or an
    evaluation from before eval/prompts.json), or whose evaluation scored an image's first
    data.max_regions regions only (before evals.max_regions), is evaluated again with
    --mode=eval, same config and flags, and the new results are the ones tabled; it is not
    trained again."""
    workdir = tmp_path / "global-seed2"
    old = {"zeroshot/auroc_mean": 0.7, "zeroshot/auroc_mean_ensemble": 0.6}
    other = {"nodule": {"positive": ["nodule"], "negative": ["no nodule"]}}
    finished_run(workdir, old if prompts == "first regions only" else {**old, **COUNTED},
                 {"none recorded": None, "other prompts": other}.get(
                     prompts, ablation.current_prompts()))
    (workdir / "wall_seconds.txt").write_text("412.5\n")
    commands = []

    def fake_subprocess_run(command, cwd, stdout, stderr):
        commands.append(command)
        finished_run(workdir, {"zeroshot/auroc_mean": 0.8, **COUNTED},
                     ablation.current_prompts())
        stdout.write("evaluated\n")
        return type("Done", (), {"returncode": 0})()

    monkeypatch.setattr(ablation.runner.subprocess, "run", fake_subprocess_run)
    results = ablation.run("global", 2, "steps=5", str(tmp_path), ["--config.data.workers=0"])
    assert results == {"zeroshot/auroc_mean": 0.8, **COUNTED, "run/wall_seconds": 412.5}
    [command] = commands
    assert command[-1] == "--mode=eval" and "--config.data.workers=0" in command
    assert command[3].endswith("configs/base.py:global,seed=2,steps=5")
    assert command[4] == f"--workdir={workdir}"
    assert (workdir / "eval_log.txt").read_text() == "evaluated\n"
    # now current: reused as it is
    assert ablation.run("global", 2, "steps=5", str(tmp_path)) == results and len(commands) == 1


def test_an_evaluation_that_leaves_the_old_results_is_a_failure(tmp_path, capsys):
    """Evaluated again, a run already has results.json: the evaluation counts only if it
    wrote the file anew, not because the old one is still there."""
    import runner

    workdir = tmp_path / "run"
    (workdir / "eval").mkdir(parents=True)
    old_results = workdir / "eval" / "results.json"
    old_results.write_text('{"m": 1.0}')
    os.utime(old_results, (1e9, 1e9))
    quiet = [sys.executable, "-c", "print('nothing written')"]
    assert runner.evaluate_again(quiet, str(workdir), "stale") == {}
    assert "results.json not written" in capsys.readouterr().out
    rewrite = [sys.executable, "-c", f"open({str(old_results)!r}, 'w').write('{{\"m\": 2.0}}')"]
    assert runner.evaluate_again(rewrite, str(workdir), "fresh") == {"m": 2.0}


def test_readme_block_is_replaced_and_the_rest_kept(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n\nintro\n\n## Next\n")
    runs = fake_runs()
    table = ablation.markdown(ablation.aggregate(runs), runs, "steps=10", [0, 1, 2])
    ablation.write_readme(table, str(readme))
    first = readme.read_text()
    assert first.startswith("# Title\n\nintro\n\n## Next\n")
    assert "<!-- ablation.py: begin -->" in first and "<!-- ablation.py: end -->" in first
    assert "# Ablation on the embedded" not in first and "#### Targets" in first
    assert "| 0.930 [0.905, 0.955] |" in first
    ablation.write_readme(table.replace("0.930", "0.999"), str(readme))  # rerun: replaced
    second = readme.read_text()
    assert second.count("<!-- ablation.py: begin -->") == 1 and "0.999" in second
    assert second.startswith("# Title\n\nintro\n\n## Next\n")


def test_sweep_runs_in_parallel_and_leaves_failed_runs_out(tmp_path, monkeypatch):
    """A failed run ({} from the runner, its log says why) is absent from the table, not a row of
    zeros; the runs that finished are all there whatever order the pool finished them in."""
    calls = []

    def fake_run(variant, seed, args, runs, extra=()):
        calls.append((variant, seed, args, tuple(extra)))
        if (variant, seed) == ("medclip", 1):
            return {}
        return {"zeroshot/auroc_mean": 0.5 + 0.1 * seed + (0.05 if variant == "roi" else 0.0)}

    monkeypatch.setattr(ablation, "run", fake_run)
    monkeypatch.setattr(sys, "argv", [
        "ablation.py", "--variants=global,medclip,roi", "--seeds=0,1", "--parallel=4",
        f"--out={tmp_path}", "--args=steps=5", "--extra=--config.data.workers=0",
        "--note=a test host"])
    ablation.main()
    assert sorted(calls) == sorted((v, s, "steps=5", ("--config.data.workers=0",))
                                   for v in ("global", "medclip", "roi") for s in (0, 1))
    saved = json.loads((tmp_path / "ablation.json").read_text())
    assert sorted(saved["runs"]["medclip"]) == ["0"] and sorted(saved["runs"]["roi"]) == ["0", "1"]
    assert saved["summary"]["roi"]["zeroshot/auroc_mean"]["mean"] == pytest.approx(0.6)
    table = (tmp_path / "ablation.md").read_text()
    assert "a test host" in table and "medclip (1 seeds)" in table


def test_runner_reuses_finished_runs_and_reports_failures(tmp_path):
    import runner

    workdir = tmp_path / "run"
    write = ("import json, os, sys; os.makedirs(sys.argv[1] + '/eval', exist_ok=True); "
             "json.dump({'m': 1.0}, open(sys.argv[1] + '/eval/results.json', 'w')); print('hi')")
    assert runner.train_and_evaluate([sys.executable, "-c", "import sys; sys.exit(3)"],
                                     str(workdir), "failing") == {}
    results = runner.train_and_evaluate([sys.executable, "-c", write, str(workdir)],
                                        str(workdir), "writing")
    assert results["m"] == 1.0 and results["run/wall_seconds"] >= 0
    assert (workdir / "log.txt").read_text() == "hi\n"
    # finished: the command is not run again
    again = runner.train_and_evaluate([sys.executable, "-c", "import sys; sys.exit(3)"],
                                      str(workdir), "reused")
    assert again == results


def test_paired_differences_from_another_sweep():
    runs = fake_runs()
    other = {"roi": {"0": result(0.90, r1=0.60), "1": result(0.90, r1=0.60),
                     "3": result(0.10)},                  # seed 3: not in this sweep
             "medclip": {"0": result(0.80)}}
    diff = ablation.paired_differences(runs, other)
    auroc = diff["roi"]["zeroshot/auroc_mean"]
    assert auroc["n"] == 2 and auroc["mean"] == pytest.approx(0.03)   # seeds 0, 1: +0.02, +0.04
    half = 12.7062 * np.std([0.02, 0.04], ddof=1) / np.sqrt(2)
    assert (auroc["low"], auroc["high"]) == pytest.approx((0.03 - half, 0.03 + half))
    assert diff["roi"]["regions/region_to_caption_semantic_R@1"]["mean"] == pytest.approx(0.06)
    assert "global" not in diff and diff["medclip"]["zeroshot/auroc_mean"]["n"] == 1
    text = ablation.markdown(ablation.aggregate(runs), runs, "", [0, 1, 2],
                             against=("ablation_augmented.json", other, True))
    section = text.split("## Against ablation_augmented.json", 1)[1]
    assert "other prompts" not in section
    other_prompts = ablation.markdown(ablation.aggregate(runs), runs, "", [0, 1, 2],
                                      against=("ablation_augmented.json", other, False))
    assert "scored zero-shot classification with other prompts" in other_prompts
    assert "| metric | medclip | roi |" in section
    first = section.split("|---|---|---|\n", 1)[1].split("\n", 1)[0]
    assert first == ("| zero-shot AUROC, headline (CheXzero pos/neg prompt ensembles) | "
                     "+0.150 | +0.030 [-0.097, +0.157] |")    # one seed of medclip: no interval


def test_sweep_reuses_an_earlier_sweeps_runs_and_trains_only_the_rest(tmp_path, monkeypatch):
    """--reuse: runs held by an earlier sweep's JSON are taken from it (not trained again); a
    sweep with other arguments, or results from before the headline protocol or from an
    evaluation that scored an image's first regions only, are refused."""
    earlier = {"args": "steps=5", "total_steps": 5, "extra": [],
               "prompts": ablation.current_prompts(), "runs": {
        "global": {"0": {"zeroshot/auroc_mean": 0.61, **COUNTED},
                   "1": {"zeroshot/auroc_mean": 0.63, **COUNTED},
                   "7": {"zeroshot/auroc_mean": 0.99, **COUNTED}},  # seed 7: not in this sweep
        "roi": {"0": {"zeroshot/auroc_mean": 0.70, **COUNTED}}}}
    path = tmp_path / "earlier.json"
    path.write_text(json.dumps(earlier))
    calls = []

    def fake_run(variant, seed, args, runs, extra=()):
        calls.append((variant, seed))
        return {"zeroshot/auroc_mean": 0.80 + 0.01 * seed}

    monkeypatch.setattr(ablation, "run", fake_run)
    argv = ["ablation.py", "--variants=global,roi,roi_noneg", "--seeds=0,1", "--args=steps=5",
            f"--out={tmp_path}", f"--reuse={path}"]
    monkeypatch.setattr(sys, "argv", argv)
    ablation.main()
    assert sorted(calls) == [("roi", 1), ("roi_noneg", 0), ("roi_noneg", 1)]
    saved = json.loads((tmp_path / "ablation.json").read_text())
    assert saved["runs"]["global"] == {"0": {"zeroshot/auroc_mean": 0.61, **COUNTED},
                                       "1": {"zeroshot/auroc_mean": 0.63, **COUNTED}}
    assert saved["runs"]["roi"] == {"0": {"zeroshot/auroc_mean": 0.70, **COUNTED},
                                    "1": {"zeroshot/auroc_mean": 0.81}}
    assert saved["summary"]["global"]["zeroshot/auroc_mean"]["mean"] == pytest.approx(0.62)

    assert saved["total_steps"] == 5 and saved["prompts"] == ablation.current_prompts()
    monkeypatch.setattr(sys, "argv", argv[:3] + ["--args=steps=5,batch=16"] + argv[4:])
    with pytest.raises(SystemExit, match="ran with --args='steps=5'"):
        ablation.main()
    monkeypatch.setattr(sys, "argv", argv[:3] + ["--args=steps=6"] + argv[4:])
    with pytest.raises(SystemExit, match="ran 5 steps, this sweep 6"):
        ablation.main()
    del earlier["total_steps"]                  # a JSON from before budgets were recorded
    path.write_text(json.dumps(earlier))
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit, match="ran an unrecorded number of steps"):
        ablation.main()
    earlier["total_steps"] = 5
    earlier["runs"]["roi"]["0"] = {"zeroshot/auroc_mean": 0.7,
                                   "zeroshot/auroc_mean_posneg": 0.8, **COUNTED}
    path.write_text(json.dumps(earlier))
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit, match=r"\(roi, seed 0\) comes from an older rmc_jax"):
        ablation.main()
    del earlier["runs"]["roi"]["0"]["zeroshot/auroc_mean_posneg"]
    del earlier["runs"]["roi"]["0"][ablation.REGIONS_KEY]   # evaluated before evals.max_regions
    path.write_text(json.dumps(earlier))
    with pytest.raises(SystemExit, match=r"\(roi, seed 0\) was evaluated before the evaluation "
                                         "scored every region"):
        ablation.main()
    earlier["runs"]["roi"]["0"].update(COUNTED)
    for prompts in (None, {"nodule": {"positive": ["nodule"], "negative": ["no nodule"]}}):
        earlier["prompts"] = prompts     # none recorded (an older JSON), or other wording
        path.write_text(json.dumps(earlier))
        with pytest.raises(SystemExit, match="other prompts than this rmc_jax's"):
            ablation.main()


def test_finished_only_tables_the_finished_runs_and_trains_nothing(tmp_path, monkeypatch,
                                                                   capsys):
    for name in ("roi-seed0", "global-seed0", "roi-seed1"):
        finished_run(tmp_path / "runs" / name, {"zeroshot/auroc_mean": 0.7, **COUNTED},
                     ablation.current_prompts())
    os.makedirs(tmp_path / "runs" / "global-seed1")          # started, never finished
    calls = []
    monkeypatch.setattr(ablation.runner, "subprocess", None)  # nothing may be launched
    real_run = ablation.run

    def recording_run(variant, seed, *args, **kwargs):
        calls.append((variant, seed))
        return real_run(variant, seed, *args, **kwargs)

    monkeypatch.setattr(ablation, "run", recording_run)
    monkeypatch.setattr(sys, "argv", ["ablation.py", "--variants=global,roi", "--seeds=0,1",
                                      f"--runs={tmp_path / 'runs'}", f"--out={tmp_path}",
                                      "--finished-only"])
    ablation.main()
    assert sorted(calls) == [("global", 0), ("roi", 0), ("roi", 1)]
    assert "left out, not finished: global-seed1" in capsys.readouterr().out
    saved = json.loads((tmp_path / "ablation.json").read_text())
    assert sorted(saved["runs"]["global"]) == ["0"] and sorted(saved["runs"]["roi"]) == ["0", "1"]
