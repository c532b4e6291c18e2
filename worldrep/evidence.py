"""Evidence for the repository: a finished results folder's tables, figures and claims checklist, copied into
`evidence/{date}-{device}-{config}/` with a `summary.md` (wall time, hardware, the checklist), never models or
big arrays. Laptop runs and GPU windows commit what this writes.

    python -m worldrep.evidence --config config/laptop.yaml --out evidence/2026-12-01-cpu-laptop --wall-s 6840

The summary's headline table is every run's final probe R² at the analysis layer, and the checklist is
`results/claims.md` as the `claims` rule wrote it.
"""
from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import pandas as pd
import yaml

from .archive import cpu_model, memory_bytes, torch_info

# What a results folder contributes: every table of the analysis stages and the plotted figures (PNG and the
# CSV of plotted values; the PDFs repeat the PNGs), the run logs that say how long each job took.
TABLE_GLOBS = ("claims.csv", "claims.md", "evaluation/metrics.csv", "evaluation/health_report.csv",
               "evaluation/trivial_baselines.csv", "evaluation/*/checkpoints.csv", "probes/*.csv",
               "probes/atlantis_errors.csv.gz", "cka/**/*.csv", "generalization/*.csv", "figures/*.png",
               "figures/*.csv", "models/*/training_log.csv", "models/*/validation_log.csv", "benchmarks/**/*.tsv")


def collected_files(results: Path) -> list[Path]:
    files = {path for pattern in TABLE_GLOBS for path in results.glob(pattern) if path.is_file()}
    return sorted(files)


def headline(probes: pd.DataFrame, layer: int) -> pd.DataFrame:
    """Final analysis-layer probe R² (x, y, mean) and mean error of every run, best first; with the ridge probe's
    mean R² and the OLS probe's selectivity where the tables have them (results made before those columns lack
    them)."""
    final = probes[(probes["step"].astype(str) == "final") & (probes["layer"] == layer)]
    columns = ["run", "r2_x", "r2_y", "r2_mean", "mean_error", "ridge_r2_mean", "selectivity"]
    return final[[c for c in columns if c in final]].sort_values("r2_mean", ascending=False)


def similarity_table(matrix: pd.DataFrame, layer: int, family: str) -> pd.DataFrame:
    """One row per pair of a family's variants (the seed-mean cells of `cka/{family}/matrix.csv` above the diagonal, in
    the matrix's variant order) at `layer`, one column per estimator the table has, in the figures' order: whether a
    similarity survives the estimators with a reference point (calibrated CKA, mutual k-NN) or only the paper's
    biased CKA."""
    from .figures import table_estimators

    part = matrix[matrix["layer"] == layer]
    order = list(dict.fromkeys(part["row"]))
    estimators = table_estimators(part)
    cells = part.set_index(["estimator", "row", "column"])["mean"]
    rows = [{"family": family, "pair": f"{a} / {b}", **{e: cells[(e, a, b)] for e in estimators}}
            for i, a in enumerate(order) for b in order[i + 1:]]
    return pd.DataFrame(rows, columns=["family", "pair", *estimators])


def job_minutes(results: Path) -> pd.DataFrame:
    """Wall minutes of every job with a benchmark file (training, evaluation, extraction), longest first."""
    rows = []
    for path in sorted((results / "benchmarks").glob("**/*.tsv")):
        seconds = pd.read_csv(path, sep="\t")["s"].iloc[0]
        rows.append({"job": str(path.relative_to(results / "benchmarks").with_suffix("")), "minutes": seconds / 60})
    return pd.DataFrame(rows, columns=["job", "minutes"]).sort_values("minutes", ascending=False)


def hardware_line() -> str:
    torch = torch_info() or {}
    devices = ", ".join(d["name"] for d in torch.get("devices", [])) or "no GPU"
    memory = memory_bytes()
    ram = f", {memory / 2**30:.0f} GiB" if memory else ""
    return (f"{cpu_model() or 'unknown CPU'}, {len(os.sched_getaffinity(0))} cores{ram}; {devices}; "
            f"torch {torch.get('version', '?')}")


def markdown_table(frame: pd.DataFrame, floats: str = "{:.3f}") -> str:
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(floats.format(v) if isinstance(v, float) else str(v) for v in row) + " |")
    return "\n".join(lines)


def summary(config: dict, config_path: Path, results: Path, wall_s: float | None, command: str | None,
            notes: str | None) -> str:
    layer = config["representations"]["analysis_layer"]
    parts = [f"# Evidence: config `{config.get('name', config_path.stem)}` ({config_path})", ""]
    if command:
        parts += [f"Command: `{command}`", ""]
    parts += [f"Hardware: {hardware_line()}", ""]
    if wall_s is not None:
        parts += [f"Wall time of the whole DAG: {wall_s / 60:.1f} min ({wall_s / 3600:.2f} h)", ""]
    if notes:
        parts += [notes.strip(), ""]
    probes = results / "probes" / "probe_metrics.csv"
    if probes.exists():
        parts += [f"## Final probe R² (layer {layer}, standard split; OLS unless named)", "",
                  markdown_table(headline(pd.read_csv(probes), layer)), ""]
    families = sorted((results / "cka").glob("*/matrix.csv"))
    if families:
        tables = [similarity_table(pd.read_csv(path), layer, path.parent.name) for path in families]
        parts += [f"## Similarity of final models by estimator (layer {layer}, mean over seed pairs)", "",
                  markdown_table(pd.concat(tables, ignore_index=True)), ""]
    claims = results / "claims.md"
    if claims.exists():
        parts += [claims.read_text().replace("# Claims checklist", "## Claims checklist", 1), ""]
    jobs = job_minutes(results)
    if len(jobs):
        parts += ["## Job wall times (minutes, from Snakemake's benchmark files)", "",
                  markdown_table(jobs.head(15), "{:.1f}"), ""]
    return "\n".join(parts)


def partial_checklist(config: dict, results: Path) -> str:
    """The §15 checklist (rule `claims`) from whatever tables a results folder holds, for a DAG stopped before
    its end (a GPU window's budget): a claim whose tables are missing is 'not reached'. The tables and settings are
    the rule's (worldrep.grid.claims_tables, claims_settings)."""
    from .claims import Evidence, checklist, markdown
    from .grid import claims_settings, claims_tables

    settings = claims_settings(config)
    tables = {key: pd.read_csv(results / path) if (results / path).exists() else None
              for key, path in claims_tables(config).items()}
    views = {run: pd.read_csv(results / f"views/{run}.csv.gz") for run in settings["views"]
             if (results / f"views/{run}.csv.gz").exists()}
    evidence = Evidence(tasks=settings["tasks"], kind=settings["kind"], layer=settings["layer"],
                        base_runs=settings["base_runs"], views=views, **tables)
    return markdown(checklist(evidence), settings["name"])


def collect(config_path: Path, results: Path, out: Path, wall_s: float | None = None, command: str | None = None,
            notes: str | None = None) -> list[Path]:
    """Copy the evidence of `results` into `out` (replacing what was there) and write `out/summary.md`."""
    config = yaml.safe_load(config_path.read_text())
    if out.exists():
        shutil.rmtree(out)
    written = []
    for path in collected_files(results):
        target = out / path.relative_to(results)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        written.append(target)
    shutil.copyfile(config_path, out / "config.yaml")
    (out / "summary.md").write_text(summary(config, config_path, results, wall_s, command, notes))
    return written + [out / "config.yaml", out / "summary.md"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="the config the results were made with")
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--wall-s", type=float, help="wall time of the whole run, for the summary")
    parser.add_argument("--command", help="the command that made the results, for the summary")
    parser.add_argument("--notes", type=Path, help="a markdown file whose text goes into the summary")
    args = parser.parse_args(argv)
    written = collect(args.config, args.results, args.out, args.wall_s, args.command,
                      args.notes.read_text() if args.notes else None)
    total = sum(p.stat().st_size for p in written)
    print(f"{len(written)} files, {total / 2**20:.1f} MiB -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
