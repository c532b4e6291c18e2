# The claims checklist (METHOD §15): every claim of the paper marked holds, does not hold or not reached, with
# the numbers that decide it, from whichever analysis tables this config plans.


rule claims:
    """§15 checklist: claims.csv (shown in the report) and claims.md."""
    input:
        unpack(claims_input),
        views=[view_file(run) for run in SINGLE_TASK_RUNS],
        code=["worldrep/claims.py", "worldrep/artifacts.py"],
    output:
        table=table_output("claims", "claims", "0. Claims checklist"),
        markdown="results/claims.md",
    params:
        tasks={r.name: mixture_tasks(r.mixture) for r in RUNS},
        kind={r.name: r.kind for r in RUNS},
        base_runs=[r.name for r in PRETRAINING_RUNS if r.mixture == config["training"]["base"]],
        views=SINGLE_TASK_RUNS,
        layer=ANALYSIS_LAYER,
        name=config.get("name", "unnamed"),
    log:
        "results/logs/claims.log",
    conda:
        ENV_ANALYSIS
    script:
        "../scripts/claims.py"
