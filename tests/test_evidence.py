"""worldrep.evidence: what a results folder contributes to evidence/ (tables, figures, the checklist; never models
or big arrays), and the summary's headline table."""
from pathlib import Path

import pandas as pd
import yaml

from worldrep.evidence import collect, headline, similarity_table

ROOT = Path(__file__).resolve().parents[1]


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def fake_results(root: Path) -> Path:
    results = root / "results"
    probes = pd.DataFrame([
        {"run": "pt1-1_s42", "step": "final", "layer": 3, "r2_x": 0.9, "r2_y": 0.7, "r2_mean": 0.8, "mean_error": 120.0},
        {"run": "pt1-3_s42", "step": "final", "layer": 3, "r2_x": 0.95, "r2_y": 0.85, "r2_mean": 0.9, "mean_error": 90.0},
        {"run": "pt1-3_s42", "step": "100", "layer": 3, "r2_x": 0.1, "r2_y": 0.1, "r2_mean": 0.1, "mean_error": 500.0},
        {"run": "pt1-3_s42", "step": "final", "layer": 4, "r2_x": 0.99, "r2_y": 0.99, "r2_mean": 0.99, "mean_error": 1.0},
    ])
    write(results / "probes/probe_metrics.csv", probes.to_csv(index=False))
    write(results / "claims.md", "# Claims checklist (METHOD §15): config `laptop`\n\n1 holds\n")
    write(results / "claims.csv", "claim,statement,status,evidence\n1,x,holds,y\n")
    write(results / "figures/world_map.png", "png")
    write(results / "figures/world_map.pdf", "pdf")
    write(results / "models/pt1-1_s42/final/model.safetensors", "weights")
    write(results / "models/pt1-1_s42/training_log.csv", "step,loss\n10,3.0\n")
    write(results / "representations/pt1-1_s42/final.npz", "array")
    write(results / "datasets/pretraining/distance/train.npz", "array")
    write(results / "benchmarks/models/pt1-1_s42.tsv", "s\th:m:s\n600.0\t0:10:00\n")
    return results


def test_collect_copies_tables_and_figures_but_no_models_or_arrays(tmp_path):
    results = fake_results(tmp_path)
    out = tmp_path / "evidence" / "2026-12-01-cpu-laptop"
    write(out / "stale.txt", "from an earlier collect")
    collect(ROOT / "config" / "laptop.yaml", results, out, wall_s=5400, command="snakemake --cores 2")
    got = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert got == ["benchmarks/models/pt1-1_s42.tsv", "claims.csv", "claims.md", "config.yaml",
                   "figures/world_map.png", "models/pt1-1_s42/training_log.csv", "probes/probe_metrics.csv",
                   "summary.md"]
    assert yaml.safe_load((out / "config.yaml").read_text())["name"] == "laptop"
    summary = (out / "summary.md").read_text()
    assert "Wall time of the whole DAG: 90.0 min (1.50 h)" in summary and "`snakemake --cores 2`" in summary
    assert "## Claims checklist (METHOD §15): config `laptop`" in summary
    # the analysis layer of laptop.yaml (3), final rows only, best first
    rows = [line for line in summary.splitlines() if line.startswith("| pt1-")]
    assert rows == ["| pt1-3_s42 | 0.950 | 0.850 | 0.900 | 90.000 |", "| pt1-1_s42 | 0.900 | 0.700 | 0.800 | 120.000 |"]
    assert "| models/pt1-1_s42 | 10.0 |" in summary


def test_headline_is_the_final_analysis_layer(tmp_path):
    probes = pd.read_csv(fake_results(tmp_path) / "probes/probe_metrics.csv")
    assert list(headline(probes, 4)["run"]) == ["pt1-3_s42"]
    assert list(headline(probes, 3)["r2_mean"]) == [0.9, 0.8]


def test_similarity_table_has_each_variant_pair_once_with_every_estimator():
    """The pairs above the diagonal in the matrix's own variant order, one column per estimator in the figures'
    order, each value read from its own (estimator, row, column) cell."""
    variants, estimators = ["pt1-1", "pt1-3", "pt1-2"], ["mutual_knn", "biased", "calibrated", "debiased"]
    rows = [{"layer": layer, "estimator": e, "row": a, "column": b, "mean": 10 * i + j + 0.01 * k + layer,
             "sem": 0.0, "n": 1}
            for layer in (3, 4) for k, e in enumerate(estimators)
            for i, a in enumerate(variants) for j, b in enumerate(variants)]
    table = similarity_table(pd.DataFrame(rows), 3, "pt1")
    assert list(table.columns) == ["family", "pair", "biased", "debiased", "calibrated", "mutual_knn"]
    assert list(table["pair"]) == ["pt1-1 / pt1-3", "pt1-1 / pt1-2", "pt1-3 / pt1-2"]
    assert table.loc[0, "biased"] == 3 + 1 + 0.01 and table.loc[2, "debiased"] == 3 + 12 + 0.03
    assert table.loc[1, "mutual_knn"] == 3 + 2 + 0.0
    # The paper's two estimators only (a config without the `cka` block): two columns.
    two = similarity_table(pd.DataFrame([r for r in rows if r["estimator"] in ("biased", "debiased")]), 4, "pt1")
    assert list(two.columns) == ["family", "pair", "biased", "debiased"] and len(two) == 3
