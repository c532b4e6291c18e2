"""Snakemake adapter: rule tokenizer -> results/tokenizer/ (AutoTokenizer-loadable)."""
import _workflow  # noqa: F401  (this workflow's `worldrep` first on sys.path)
import sys
from pathlib import Path

from worldrep.tokenizer import save_tokenizer

sys.stderr = sys.stdout = open(snakemake.log[0], "w")
save_tokenizer(Path(snakemake.output.tokenizer).parent)
print("saved", *snakemake.output, flush=True)
