# The claims checklist (METHOD §15): every claim of the paper marked holds, does not hold or not reached, with
# the numbers that decide it, from whichever analysis tables this config plans.


rule claims:
    """§15 checklist: claims.csv (shown in the report) and claims.md."""
    input:
        unpack(claims_input),
        views=[view_file(run) for run in SINGLE_TASK_RUNS],
    output:
        table=table_output("claims", "claims", "0. Claims checklist"),
        markdown="results/claims.md",
    params:
        **grid.claims_settings(config),
    log:
        "results/logs/claims.log",
    conda:
        ENV_ANALYSIS
    script:
        "../scripts/claims.py"
