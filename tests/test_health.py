"""The §14 health report: metrics against the trivial predictor in the right direction, final layer-5 probes."""
import pandas as pd
import pytest

from worldrep.health import beats, health_report


@pytest.mark.parametrize("metric, value, baseline, expected", [
    ("accuracy", 0.9, 0.5, True), ("accuracy", 0.5, 0.5, False), ("accuracy", 0.4, 0.5, False),
    ("mean_absolute_error", 10.0, 300.0, True), ("mean_absolute_error", 300.0, 300.0, False),
    ("mean_absolute_error", 4024.9, 300.0, False),
])
def test_beats_uses_the_metric_direction(metric, value, baseline, expected):
    assert beats(metric, value, baseline) is expected


def test_beats_rejects_an_unknown_metric():
    with pytest.raises(ValueError, match="unknown metric 'r2'"):
        beats("r2", 1.0, 0.0)


def tables():
    metrics = pd.DataFrame([
        # run, mixture, kind, seed, test_set, task, metric, value, failures
        ("pt1-1_s42", "pt1-1", "pretraining", 42, "standard", "distance", "mean_absolute_error", 12.0, 0),
        ("pt1-5_s42", "pt1-5", "pretraining", 42, "standard", "inside", "accuracy", 0.51, 3),
        ("pt7_s42", "pt7", "pretraining", 42, "standard", "inside", "accuracy", 0.8, 0),
        ("pt7_s42", "pt7", "pretraining", 42, "atlantis", "inside", "accuracy", 0.3, 0),
        ("ftwb1-1_s42", "ftwb1-1", "finetuning", 42, "standard", "distance", "mean_absolute_error", 9.0, 0),
    ], columns=["run", "mixture", "kind", "seed", "test_set", "task", "metric", "value", "failures"]).assign(n=100)
    baselines = pd.DataFrame([
        ("standard", "distance", "mean_absolute_error", "520", 300.0),
        ("standard", "inside", "accuracy", "false", 0.6),
        ("atlantis", "inside", "accuracy", "false", 0.55),
    ], columns=["test_set", "task", "metric", "predictor", "value"])
    probes = pd.DataFrame([
        ("pt1-1_s42", "final", 5, 0.93, 40.0), ("pt1-1_s42", "final", 4, 0.5, 90.0), ("pt1-1_s42", "100", 5, 0.2, 300.0),
        ("pt1-5_s42", "final", 5, 0.02, 600.0), ("pt7_s42", "final", 5, 0.97, 20.0),
    ], columns=["run", "step", "layer", "r2_mean", "mean_error"])
    return metrics, baselines, probes


def test_health_report_joins_pretraining_runs_with_floor_and_final_probe():
    report = health_report(*tables(), layer=5).set_index("run")
    assert list(report.index) == ["pt1-1_s42", "pt1-5_s42", "pt7_s42"]  # fine-tuned runs are not in it
    assert set(report["test_set"]) == {"standard"}  # pt7's Atlantis test set is not a health criterion (§14)
    assert report.loc["pt1-1_s42", "trivial_value"] == 300.0 and bool(report.loc["pt1-1_s42", "beats_trivial"])
    assert not report.loc["pt1-5_s42", "beats_trivial"]  # 0.51 < majority class 0.6: a failed inside seed
    assert report.loc["pt7_s42", "trivial_value"] == 0.6 and report.loc["pt7_s42", "trivial_answer"] == "false"
    assert report.loc["pt1-1_s42", "probe_r2_layer5"] == 0.93  # final checkpoint, layer 5 (not step 100, layer 4)
    assert report.loc["pt1-5_s42", "probe_error_layer5"] == 600.0
    assert report.loc["pt1-5_s42", "failures"] == 3


def test_health_report_names_a_test_set_without_baseline():
    metrics, baselines, probes = tables()
    with pytest.raises(ValueError, match=r"no trivial baseline for test sets \[\('standard', 'inside'\)\]"):
        health_report(metrics, baselines.iloc[[0, 2]], probes, layer=5)
