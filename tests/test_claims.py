"""The claims checklist (worldrep/claims.py, METHOD §15) on constructed tables whose answer is known: a paper-like
result where every claim holds, each claim turned against the paper (does not hold), and results that cannot
decide them (not reached)."""
import copy

import numpy as np
import pandas as pd
import pytest

from worldrep.claims import FAILS, HOLDS, MAP_R2, NOT_REACHED, Evidence, checklist, markdown

ALL7 = ["distance", "trianglearea", "angle", "compass", "inside", "perimeter", "crossing"]
TASKS = {"pt1-1_s42": ["distance"], "pt1-3_s42": ["angle"], "pt1-4_s42": ["compass"], "pt1-7_s42": ["crossing"],
         "pt2-2_s42": ["angle", "compass"], "pt7_s42": ALL7,
         "ftwb1-1_s42": ["distance"], "ftwb2-2_s42": ["angle", "compass"], "ftwb2-13_s42": ["perimeter", "distance"]}
KIND = {run: "finetuning" if run.startswith("ftwb") else "pretraining" for run in TASKS}
R2 = {"pt1-1_s42": 0.93, "pt1-3_s42": 0.91, "pt1-4_s42": 0.7, "pt1-7_s42": 0.05, "pt2-2_s42": 0.9, "pt7_s42": 0.95,
      "ftwb1-1_s42": 0.9, "ftwb2-2_s42": 0.92, "ftwb2-13_s42": 0.88}


def probes(r2):
    rows = [{"run": run, "step": "final", "layer": layer, "r2_mean": value if layer == 5 else -1.0}
            for run, value in r2.items() for layer in (3, 4, 5, 6)]
    return pd.DataFrame(rows + [{"run": "pt1-1_s42", "step": "100", "layer": 5, "r2_mean": -0.3}])


def health(beats):
    rows = [{"run": run, "task": task, "beats_trivial": beats.get((run, task), True)}
            for run, tasks in TASKS.items() if KIND[run] == "pretraining" for task in tasks]
    return pd.DataFrame(rows)


def view(stds, n=400, seed=0):
    rng = np.random.default_rng(seed)
    pcs = rng.standard_normal((n, 3)) * np.asarray(stds)
    return pd.DataFrame({"step": "final", "pc1": pcs[:, 0], "pc2": pcs[:, 1], "pc3": pcs[:, 2]})


def cka(distance_to_others):
    variants = {"pt1-1": 0, "pt1-3": 1, "pt1-4": 2, "pt1-7": 3}
    rows = []
    for a in variants:
        for b in variants:
            value = 1.0 if a == b else 0.6
            if "pt1-1" in (a, b) and a != b:
                value = distance_to_others
            if "pt1-7" in (a, b) and a != b:
                value = 0.05  # crossing shares nothing (§14); left out of the claim
            for estimator in ("biased", "debiased"):
                rows.append({"layer": 5, "estimator": estimator, "row": a, "column": b, "mean": value})
    return pd.DataFrame(rows)


def task_count(means, seeds=("pooled", "42")):
    """The summary's pooled rows and one seed's same-seed rows (as cka.task_count_tables names them), equal here."""
    return pd.DataFrame([{"k": k, "layer": 5, "estimator": "biased", "seed": seed, "mean": m}
                         for seed in seeds for k, m in means.items()])


def deviation(with_d, without_d):
    return pd.DataFrame([{"mixture": "ftwb2-13", "seed": 42, "task": "distance", "deviation": with_d},
                         {"mixture": "ftwb2-2", "seed": 42, "task": "angle", "deviation": without_d},
                         {"mixture": "ftwb2-2", "seed": 42, "task": "compass", "deviation": np.nan}])


def atlantis(with_d, without_d, p=0.001):
    groups = {"baseline": 80.0, "atlantis_without_distance": without_d, "atlantis_with_distance": with_d}
    return pd.DataFrame([{"group": g, "models": 1, "cities": 27, "mean": m, "median": m, "mann_whitney_u": 10.0,
                          "mann_whitney_p": p, "control_atlantis_mean": np.nan} for g, m in groups.items()])


def paper_like() -> Evidence:
    """Every claim of §15 holds here, by construction."""
    return Evidence(
        tasks=TASKS, kind=KIND, layer=5, base_runs=["pt7_s42"], probes=probes(R2), health=health({}),
        views={"pt1-1_s42": view([10, 1, 1]), "pt1-3_s42": view([5, 5, 1]), "pt1-4_s42": view([3, 3, 3]),
               "pt1-7_s42": view([20, 1, 1])},  # crossing has no map, so its thread-like PCA does not count
        cka_pt1=cka(0.3), task_count=task_count({1: 0.4, 2: 0.6, 3: 0.65}),
        cka_fit=pd.DataFrame([{"estimator": "biased", "layer": 5, "n": 30, "r": 0.4, "p": 0.03}]),
        deviation=deviation(-0.4, 0.1), atlantis=atlantis(400.0, 150.0))


def statuses(evidence):
    table = checklist(evidence)
    assert list(table["claim"]) == list(range(1, 9))
    return dict(zip(table["claim"], table["status"]))


def test_paper_like_results_hold_every_claim():
    assert statuses(paper_like()) == {c: HOLDS for c in range(1, 9)}


def altered(**changes):
    e = copy.deepcopy(paper_like())
    for key, value in changes.items():
        setattr(e, key, value)
    return e


AGAINST = {  # claim -> evidence where exactly that claim does not hold
    1: altered(probes=probes({**R2, "pt1-7_s42": 0.8})),  # crossing alone has a map
    2: altered(views={**paper_like().views, "pt1-3_s42": view([20, 1, 1], seed=1)}),  # angle more thread-like
    3: altered(cka_pt1=cka(0.8)),  # distance is the most similar task
    4: altered(task_count=task_count({1: 0.6, 2: 0.5})),  # CKA falls with more tasks
    5: altered(health=health({("pt7_s42", "crossing"): False})),
    6: altered(cka_fit=pd.DataFrame([{"estimator": "biased", "layer": 5, "n": 30, "r": -0.2, "p": 0.3}])),
    7: altered(deviation=deviation(0.3, -0.1)),
    8: altered(atlantis=atlantis(120.0, 300.0)),
}


@pytest.mark.parametrize("claim", AGAINST)
def test_each_claim_turned_against_the_paper_does_not_hold(claim):
    expected = {c: HOLDS for c in range(1, 9)} | {claim: FAILS}
    if claim == 5:  # the 7-task model is also the fine-tuning base: NI against a base that failed is no answer
        expected[7] = NOT_REACHED
    assert statuses(AGAINST[claim]) == expected


def test_nothing_planned_reaches_no_claim():
    empty = Evidence(tasks={"pt1-1_s42": ["distance"]}, kind={"pt1-1_s42": "pretraining"}, layer=5)
    assert set(statuses(empty).values()) == {NOT_REACHED}


def test_noise_maps_leave_representation_claims_not_reached():
    """Runs that learned their tasks but whose probes read noise: every claim resting on maps is not reached."""
    noise = altered(probes=probes({run: 0.1 for run in R2}))
    got = statuses(noise)
    assert got[1] == FAILS  # the runs learned their tasks and still show no map: that is an answer
    assert all(got[c] == NOT_REACHED for c in (2, 3, 4, 6, 8)), got
    assert got[5] == HOLDS and got[7] == HOLDS  # task metrics, not maps


def test_untrained_single_task_runs_leave_claim_1_not_reached():
    beats = {(run, task): False for run, tasks in TASKS.items() if len(tasks) == 1 for task in tasks}
    assert statuses(altered(health=health(beats)))[1] == NOT_REACHED


def test_untrained_base_leaves_claim_7_not_reached():
    got = statuses(altered(health=health({("pt7_s42", "angle"): False})))
    assert got[7] == NOT_REACHED and got[5] == FAILS


def test_map_threshold_is_inclusive():
    e = altered(probes=probes({**R2, "ftwb2-13_s42": MAP_R2}))
    assert statuses(e)[8] == HOLDS
    e = altered(probes=probes({**R2, "ftwb2-13_s42": MAP_R2 - 1e-9}))
    assert statuses(e)[8] == NOT_REACHED


def test_markdown_lists_every_claim_with_its_numbers():
    table = checklist(altered(atlantis=atlantis(120.0, 300.0)))
    text = markdown(table, "laptop")
    assert "config `laptop`" in text and "7 holds · 1 does not hold · 0 not reached" in text
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 8  # the header and one row per claim
    assert "**does not hold**" in rows[8] and "atlantis_with_distance 120.000" in rows[8]


# ---- claims with their seeds -------------------------------------------------------------------------------------

def several_seeds(altered_seeds: dict[int, dict[str, float]], seeds=(42, 1, 2)) -> Evidence:
    """The paper-like evidence for each seed (runs renamed `_s{seed}`), with per-seed R² changes; the pooled tables
    (CKA matrix, fit, Atlantis groups) once."""
    def renamed(run, seed):
        return run.replace("_s42", f"_s{seed}")

    base = paper_like()
    frames = {"probes": [], "health": [], "deviation": []}
    tasks, kind, views, base_runs = {}, {}, {}, []
    for seed in seeds:
        r2 = {renamed(run, seed): value for run, value in {**R2, **altered_seeds.get(seed, {})}.items()}
        frames["probes"].append(probes(r2))
        frames["health"].append(health({}).assign(run=lambda t, s=seed: t["run"].map(lambda r: renamed(r, s))))
        frames["deviation"].append(base.deviation.assign(seed=seed))
        tasks |= {renamed(run, seed): t for run, t in TASKS.items()}
        kind |= {renamed(run, seed): k for run, k in KIND.items()}
        views |= {renamed(run, seed): v for run, v in base.views.items()}
        base_runs.append(renamed("pt7_s42", seed))
    return Evidence(tasks=tasks, kind=kind, layer=5, base_runs=base_runs, views=views, cka_pt1=base.cka_pt1,
                    task_count=task_count({1: 0.4, 2: 0.6, 3: 0.65}, ("pooled", *map(str, seeds))),
                    cka_fit=base.cka_fit, atlantis=base.atlantis,
                    **{key: pd.concat(parts, ignore_index=True) for key, parts in frames.items()})


def test_a_claim_holds_on_a_strict_majority_of_seeds():
    table = checklist(several_seeds({1: {"pt1-7_s42": 0.8}})).set_index("claim")  # seed 1: crossing has a map
    assert table.loc[1, "status"] == HOLDS and (table.loc[1, "seeds_holding"], table.loc[1, "seeds_run"]) == (2, 3)
    assert table.loc[1, "decided"] == "per seed" and "seed 1: does not hold" in table.loc[1, "evidence"]
    assert table.loc[5, "seeds_holding"] == 3 and table.loc[3, "decided"] == "pooled"
    text = markdown(checklist(several_seeds({1: {"pt1-7_s42": 0.8}})), "three")
    assert "| **holds** | 2 of 3 hold |" in text and "| **holds** | pooled over 3 seeds |" in text


def test_seeds_that_split_decide_nothing():
    table = checklist(several_seeds({1: {"pt1-7_s42": 0.8}}, seeds=(42, 1))).set_index("claim")
    assert table.loc[1, "status"] == NOT_REACHED and table.loc[1, "evidence"].startswith("1 of 2 seeds hold, 1 do not")
    table = checklist(several_seeds({1: {"pt1-7_s42": 0.8}, 2: {"pt1-7_s42": 0.9}})).set_index("claim")
    assert table.loc[1, "status"] == FAILS and table.loc[1, "seeds_holding"] == 1


def test_a_one_seed_decision_says_so():
    table = checklist(paper_like())
    assert set(table["decided"]) == {"one seed"} and set(table["seeds_run"]) == {1}
    text = markdown(table, "one")
    assert text.count("one seed: decided on a single draw") == 8
