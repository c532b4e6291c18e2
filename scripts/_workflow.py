"""Imported first by every script: puts this workflow copy's `worldrep` package first on sys.path.

Snakemake runs a script from a temporary copy but appends the script's own folder to sys.path, so this
module is found here and its location tells where the workflow root is.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
