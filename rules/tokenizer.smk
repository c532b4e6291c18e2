rule tokenizer:
    """The 98-token character vocabulary as a Hugging Face tokenizer directory (METHOD §5)."""
    output:
        tokenizer="results/tokenizer/tokenizer.json",
        config="results/tokenizer/tokenizer_config.json",
    log:
        "results/logs/tokenizer.log",
    conda:
        ENV_DATA
    script:
        "../scripts/tokenizer.py"
