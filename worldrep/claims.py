"""The claims checklist (METHOD §15): each of the paper's eight claims marked holds, does not hold or not
reached, with the numbers that decide it, from the analysis tables a config produced.

"Not reached" means the results cannot decide the claim: the config lacks the runs it needs, or those runs
have no map to compare (a claim about representations measured on noise decides nothing). "Does not hold"
is kept for runs that got there and still disagree with the paper.

Pure pandas on the tables of the analysis rules; every decision rule and threshold is stated here.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

HOLDS, FAILS, NOT_REACHED = "holds", "does not hold", "not reached"
STATUSES = (HOLDS, FAILS, NOT_REACHED)
# A run "has a map" when its final analysis-layer probe reaches this mean coordinate R² on the standard split
# (§11). Random features score about 0 (below 0 on small worlds, where OLS overfits); the paper's maps ~0.9.
MAP_R2 = 0.5
ESTIMATOR = "biased"  # the paper's CKA (§12)
STATEMENTS = {
    1: "World coordinates become linearly decodable for most single tasks, but not for crossing",
    2: "Tasks give different geometries; distance's is thread-like (one dominant direction)",
    3: "Distance is the divergent task: lowest single-task CKA to the other tasks",
    4: "CKA rises from 1 to 2-3 tasks, then saturates",
    5: "The 7-task model learns all seven tasks, crossing included",
    6: "Single-task CKA partially predicts fine-tuning generalization (positive correlation)",
    7: "Fine-tuning mixes with distance generalize worse than the best single-task teacher predicts",
    8: "A real-city probe places Atlantis worse when distance is in the fine-tuning mix",
}


@dataclass
class Evidence:
    """What a config produced. Tables a config does not plan are None; `tasks` maps run -> its mixture's tasks
    and `kind` run -> "pretraining" | "finetuning", for every planned run."""
    tasks: dict[str, list[str]]
    kind: dict[str, str]
    layer: int
    base_runs: list[str] = field(default_factory=list)  # the fine-tuning base runs (`training.base` × seeds)
    probes: pd.DataFrame | None = None           # probes/probe_metrics.csv
    health: pd.DataFrame | None = None           # evaluation/health_report.csv
    views: dict[str, pd.DataFrame] = field(default_factory=dict)  # single-task run -> views/{run}.csv.gz
    cka_pt1: pd.DataFrame | None = None          # cka/pt1/matrix.csv
    task_count: pd.DataFrame | None = None       # cka/task_count_summary.csv
    cka_fit: pd.DataFrame | None = None          # cka/cka_vs_generalization_fit.csv
    deviation: pd.DataFrame | None = None        # generalization/best_teacher_deviation.csv
    atlantis: pd.DataFrame | None = None         # probes/atlantis_summary.csv
    count_seed: str = "pooled"                   # the task-count summary's rows claim 4 reads: a seed, or pooled

    def seeds(self) -> list[int]:
        return sorted({run_seed(run) for run in self.tasks})

    def for_seed(self, seed: int) -> Evidence:
        """The evidence of one seed's runs: per-run tables cut to them, the task-count and deviation tables to
        that seed's rows. The tables pooled over seeds (CKA matrix, CKA fit, Atlantis groups) stay as they are:
        the claims that read them are decided once, pooled (POOLED)."""
        keep = {run for run in self.tasks if run_seed(run) == seed}

        def runs_of(table):
            return None if table is None else table[table["run"].isin(keep)]

        deviation = None if self.deviation is None else self.deviation[self.deviation["seed"].astype(int) == seed]
        return replace(self, tasks={r: t for r, t in self.tasks.items() if r in keep},
                       kind={r: k for r, k in self.kind.items() if r in keep},
                       base_runs=[r for r in self.base_runs if r in keep], probes=runs_of(self.probes),
                       health=runs_of(self.health), views={r: v for r, v in self.views.items() if r in keep},
                       deviation=deviation, count_seed=str(seed))

    def mixture_tasks(self) -> dict[str, list[str]]:
        """mixture -> its tasks, for the tables keyed by mixture (CKA matrices, deviations). Run names are
        `{mixture}_s{seed}` (worldrep.grid.run_name; not imported: the analysis env has no jsonschema)."""
        return {run.rsplit("_s", 1)[0]: tasks for run, tasks in self.tasks.items()}

    def single_task_runs(self) -> dict[str, str]:
        return {run: tasks[0] for run, tasks in self.tasks.items()
                if self.kind[run] == "pretraining" and len(tasks) == 1}

    def final_r2(self) -> dict[str, float]:
        """run -> final mean coordinate R² at the analysis layer."""
        if self.probes is None:
            return {}
        final = self.probes[(self.probes["step"].astype(str) == "final") & (self.probes["layer"] == self.layer)]
        return dict(zip(final["run"], final["r2_mean"].astype(float)))

    def learned(self, run: str, task: str) -> bool | None:
        """Whether `run` beats the trivial predictor on the standard test set of `task` (§14); None if unknown."""
        if self.health is None:
            return None
        rows = self.health[(self.health["run"] == run) & (self.health["task"] == task)]
        return bool(rows["beats_trivial"].astype(bool).all()) if len(rows) else None


def run_seed(run: str) -> int:
    """The seed of a run named `{mixture}_s{seed}` (worldrep.grid.run_name)."""
    return int(run.rsplit("_s", 1)[1])


def verdict(claim: int, status: str, evidence: str) -> dict:
    assert status in STATUSES
    return {"claim": claim, "statement": STATEMENTS[claim], "status": status, "evidence": evidence}


def fmt(values: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in values.items())


def with_map(e: Evidence, runs) -> dict[str, float]:
    r2 = e.final_r2()
    return {run: r2[run] for run in runs if run in r2 and r2[run] >= MAP_R2}


def claim_1(e: Evidence) -> dict:
    """Holds when most (more than half) of the non-crossing single-task runs that learned their task have a map,
    and no crossing run has one. Not reached when no non-crossing single-task run learned its task."""
    singles, r2 = e.single_task_runs(), e.final_r2()
    if not singles or not r2:
        return verdict(1, NOT_REACHED, "no single-task runs")
    learned = [run for run, task in singles.items() if task != "crossing" and e.learned(run, task)]
    crossing = [run for run, task in singles.items() if task == "crossing"]
    numbers = "final R²: " + fmt({f"{singles[run]} ({run})": r2[run] for run in singles if run in r2})
    if not learned:
        return verdict(1, NOT_REACHED, f"no non-crossing single-task run beats the trivial predictor; {numbers}")
    mapped, crossing_mapped = with_map(e, learned), with_map(e, crossing)
    ok = 2 * len(mapped) > len(learned) and not crossing_mapped
    detail = (f"{len(mapped)} of {len(learned)} learned non-crossing single-task runs reach R² >= {MAP_R2}; "
              f"crossing runs with a map: {len(crossing_mapped)} of {len(crossing)}"
              + ("" if crossing else " (no crossing run: that half is untested)") + f"; {numbers}")
    return verdict(1, HOLDS if ok else FAILS, detail)


def pc1_share(view: pd.DataFrame) -> float:
    """Variance share of the first of the top three principal components of the final representations."""
    final = view[view["step"].astype(str) == "final"]
    variances = final[["pc1", "pc2", "pc3"]].to_numpy(np.float64).var(axis=0)
    return float(variances[0] / variances.sum())


def claim_2(e: Evidence) -> dict:
    """Proxy for "thread-like": distance's first PC carries the largest share (of the top three) among the
    single-task models with a map. Needs distance and at least one other non-crossing task with a map."""
    singles = e.single_task_runs()
    mapped = with_map(e, [run for run, task in singles.items() if task != "crossing" and run in e.views])
    shares = {singles[run]: pc1_share(e.views[run]) for run in mapped}
    if "distance" not in shares or len(shares) < 2:
        return verdict(2, NOT_REACHED, "needs distance and another non-crossing single-task model, both with a "
                       f"map (R² >= {MAP_R2}); have: {sorted(shares) or 'none'}")
    top = max(shares, key=shares.get)
    return verdict(2, HOLDS if top == "distance" else FAILS, "PC1 share of the top-3 PCA variance: " + fmt(shares))


def claim_3(e: Evidence) -> dict:
    """Holds when distance has the lowest mean off-diagonal single-task CKA (crossing left out, §14). Needs at
    least three non-crossing single-task variants with a map, distance among them."""
    if e.cka_pt1 is None:
        return verdict(3, NOT_REACHED, "no single-task CKA matrix (pt1 family)")
    singles = e.single_task_runs()
    mapped_tasks = {singles[run] for run in with_map(e, singles)} - {"crossing"}
    m = e.cka_pt1[(e.cka_pt1["layer"] == e.layer) & (e.cka_pt1["estimator"] == ESTIMATOR)]
    variant_task = {mixture: tasks[0] for mixture, tasks in e.mixture_tasks().items() if len(tasks) == 1}
    m = m.assign(row_task=m["row"].map(variant_task), column_task=m["column"].map(variant_task))
    m = m[m["row_task"].isin(mapped_tasks) & m["column_task"].isin(mapped_tasks) & (m["row"] != m["column"])]
    means = m.groupby("row_task")["mean"].mean().to_dict()
    if "distance" not in means or len(means) < 3:
        return verdict(3, NOT_REACHED, f"needs >= 3 non-crossing single-task variants with a map, distance "
                       f"among them; have {sorted(means) or 'none'}")
    lowest = min(means, key=means.get)
    return verdict(3, HOLDS if lowest == "distance" else FAILS,
                   f"mean off-diagonal layer-{e.layer} CKA ({ESTIMATOR}): " + fmt(means))


def claim_4(e: Evidence) -> dict:
    """Holds when the pooled task-disjoint CKA at the analysis layer rises from k = 1 to k = 2 and, where
    k = 3 is measured, rises less from 2 to 3 than from 1 to 2 (saturation)."""
    if e.task_count is None:
        return verdict(4, NOT_REACHED, "no CKA-vs-task-count table")
    t = e.task_count[(e.task_count["seed"].astype(str) == e.count_seed) & (e.task_count["estimator"] == ESTIMATOR)
                     & (e.task_count["layer"] == e.layer)]
    means = {int(k): float(v) for k, v in zip(t["k"], t["mean"]) if pd.notna(v)}
    if 1 not in means or 2 not in means:
        return verdict(4, NOT_REACHED, f"needs task-disjoint pairs at k = 1 and k = 2; have k = {sorted(means)}")
    if not with_map(e, e.single_task_runs()):
        return verdict(4, NOT_REACHED, "no single-task model has a map: CKA of noise decides nothing")
    rise = means[2] - means[1]
    ok = rise > 0 and (3 not in means or means[3] - means[2] < rise)
    return verdict(4, HOLDS if ok else FAILS, f"{e.count_seed} layer-{e.layer} CKA by task count: "
                   + fmt({f"k={k}": v for k, v in sorted(means.items())}))


def claim_5(e: Evidence) -> dict:
    """Holds when a 7-task pretraining run beats the trivial predictor on all seven standard test sets."""
    runs = [run for run, tasks in e.tasks.items() if e.kind[run] == "pretraining" and len(set(tasks)) == 7
            and not run.startswith("pt7-atl")]
    if not runs or e.health is None:
        return verdict(5, NOT_REACHED, "no 7-task pretraining run")
    h = e.health[e.health["run"].isin(runs)]
    beaten = h.groupby("run")["beats_trivial"].apply(lambda s: int(s.astype(bool).sum())).to_dict()
    r2 = e.final_r2()
    ok = all(beaten.get(run, 0) == 7 for run in runs)
    return verdict(5, HOLDS if ok else FAILS, "; ".join(
        f"{run}: beats the trivial predictor on {beaten.get(run, 0)} of 7 tasks, probe R² {r2.get(run, np.nan):.3f}"
        for run in runs))


def claim_6(e: Evidence) -> dict:
    """Holds when the CKA-vs-FTWB1 fit has r > 0 (needs a fit over >= 3 points, and single-task maps)."""
    if e.cka_fit is None:
        return verdict(6, NOT_REACHED, "no CKA-vs-generalization fit")
    fit = e.cka_fit[e.cka_fit["estimator"] == ESTIMATOR]
    if fit.empty or pd.isna(fit["r"].iloc[0]):
        return verdict(6, NOT_REACHED, "the fit needs >= 3 (CKA, NI) points")
    if not with_map(e, e.single_task_runs()):
        return verdict(6, NOT_REACHED, "no single-task model has a map: CKA of noise decides nothing")
    r, p, n = float(fit["r"].iloc[0]), float(fit["p"].iloc[0]), int(fit["n"].iloc[0])
    return verdict(6, HOLDS if r > 0 else FAILS, f"Pearson r {r:.3f} (p {p:.3g}, n {n})")


def claim_7(e: Evidence) -> dict:
    """Holds when the mean best-teacher deviation of the mixes with distance is below that of the mixes without.
    Not reached when a base model did not learn its tasks: NI against a broken baseline measures nothing."""
    if e.deviation is None or e.deviation.empty:
        return verdict(7, NOT_REACHED, "no best-teacher deviations (needs FTWB2 mixes and their FTWB1 teachers)")
    unlearned = [f"{run} {task}" for run in e.base_runs for task in e.tasks.get(run, [])
                 if e.learned(run, task) is False]
    if unlearned:
        return verdict(7, NOT_REACHED, "the fine-tuning base does not beat the trivial predictor on: "
                       + ", ".join(unlearned))
    d = e.deviation.dropna(subset=["deviation"])
    mixture_tasks = e.mixture_tasks()
    has_d = d["mixture"].map(lambda m: "distance" in mixture_tasks.get(m, []))
    groups = {"with distance": d[has_d]["deviation"], "without distance": d[~has_d]["deviation"]}
    if any(g.empty for g in groups.values()):
        return verdict(7, NOT_REACHED, "needs deviations of mixes both with and without distance; have "
                       + ", ".join(f"{k}: {len(g)} rows" for k, g in groups.items()))
    means = {k: float(g.mean()) for k, g in groups.items()}
    ok = means["with distance"] < means["without distance"]
    return verdict(7, HOLDS if ok else FAILS, "mean deviation (NI - best-teacher prediction): " + fmt(means))


def claim_8(e: Evidence) -> dict:
    """Holds when the Atlantis error with distance exceeds the error without (two-sided Mann–Whitney p
    reported). Needs both groups, and fine-tuned models with a map (else the probe places nothing)."""
    if e.atlantis is None:
        return verdict(8, NOT_REACHED, "no Atlantis reconstruction (needs two-task fine-tuning runs)")
    a = e.atlantis.set_index("group")
    means = {g: a.loc[g, "mean"] for g in ("baseline", "atlantis_without_distance", "atlantis_with_distance")}
    if any(pd.isna(v) for v in means.values()):
        return verdict(8, NOT_REACHED, "needs two-task fine-tuned models both with and without distance")
    tuned = [run for run, tasks in e.tasks.items() if e.kind[run] == "finetuning" and len(tasks) == 2]
    r2 = e.final_r2()
    mapped = with_map(e, tuned)
    numbers = (fmt({g: float(v) for g, v in means.items()}) + f" (scaled units); Mann–Whitney p "
               f"{float(a['mann_whitney_p'].iloc[0]):.3g}")
    control = a["control_atlantis_mean"].iloc[0] if "control_atlantis_mean" in a else np.nan
    if pd.notna(control):
        numbers += f"; pt7-atl Atlantis mean {float(control):.1f}"
    if len(mapped) < len(tuned):
        return verdict(8, NOT_REACHED, f"{len(tuned) - len(mapped)} of {len(tuned)} two-task fine-tuned models "
                       f"have no map (R² < {MAP_R2}: " + fmt({r: r2.get(r, np.nan) for r in tuned}) + f"); {numbers}")
    ok = means["atlantis_with_distance"] > means["atlantis_without_distance"]
    return verdict(8, HOLDS if ok else FAILS, "mean error: " + numbers)


CLAIMS = (claim_1, claim_2, claim_3, claim_4, claim_5, claim_6, claim_7, claim_8)
# Decided once on tables that pool every seed, as the paper decides them: the seed-averaged CKA matrix (3), the fit
# of seed-averaged CKA against seed-averaged generalization (6), the Atlantis errors of all models (8). The others
# are decided seed by seed on that seed's runs.
POOLED = {3, 6, 8}
COLUMNS = ["claim", "statement", "status", "seeds_holding", "seeds_run", "decided", "evidence"]


def by_seeds(claim: int, verdicts: dict[int, dict]) -> dict:
    """One claim from its per-seed verdicts: it holds when a strict majority of the seeds run hold, does not hold
    when a strict majority do not, and is otherwise not reached (the seeds disagree, or too few reach it)."""
    statuses = [v["status"] for v in verdicts.values()]
    n, holding, failing = len(statuses), statuses.count(HOLDS), statuses.count(FAILS)
    status = HOLDS if 2 * holding > n else FAILS if 2 * failing > n else NOT_REACHED
    if n == 1:
        (only,) = verdicts.values()
        return only | {"seeds_holding": holding, "seeds_run": 1, "decided": "one seed"}
    evidence = f"{holding} of {n} seeds hold, {failing} do not; " + "; ".join(
        f"seed {seed}: {v['status']}: {v['evidence']}" for seed, v in verdicts.items())
    return verdict(claim, status, evidence) | {"seeds_holding": holding, "seeds_run": n, "decided": "per seed"}


def checklist(e: Evidence) -> pd.DataFrame:
    """One row per claim of §15: claim, statement, status, how many seeds hold it out of how many were run (per
    seed), how it was decided (`one seed`, `per seed`, or `pooled` over the seeds), and the numbers."""
    seeds, rows = e.seeds(), []
    for number, claim in enumerate(CLAIMS, start=1):
        if number in POOLED or not seeds:
            rows.append(claim(e) | {"seeds_holding": pd.NA, "seeds_run": len(seeds),
                                    "decided": "one seed" if len(seeds) == 1 else "pooled"})
        else:
            rows.append(by_seeds(number, {seed: claim(e.for_seed(seed)) for seed in seeds}))
    return pd.DataFrame(rows, columns=COLUMNS)


def seeds_cell(row) -> str:
    if row.decided == "pooled":
        return f"pooled over {row.seeds_run} seeds"
    if row.decided == "one seed":
        return "one seed: decided on a single draw"
    return f"{row.seeds_holding} of {row.seeds_run} hold"


def markdown(table: pd.DataFrame, config_name: str) -> str:
    counts = table["status"].value_counts()
    lines = [f"# Claims checklist (METHOD §15): config `{config_name}`", "",
             " · ".join(f"{counts.get(s, 0)} {s}" for s in STATUSES), "",
             f"A run has a map when its final analysis-layer probe reaches mean R² >= {MAP_R2}. A claim decided seed by "
             "seed holds when a strict majority of the seeds hold it; claims 3, 6 and 8 are decided on tables pooled "
             "over the seeds.", "",
             "| # | claim | status | seeds | the numbers that decide it |", "|---|---|---|---|---|"]
    for row in table.itertuples():
        lines.append(f"| {row.claim} | {row.statement} | **{row.status}** | {seeds_cell(row)} | "
                     f"{row.evidence.replace('|', '/')} |")
    return "\n".join(lines) + "\n"
