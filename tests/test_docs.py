"""The repository stands alone: its method document is inside it, and no tracked file points outside it."""
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The folder a developer's checkout has beside it (the spec it started from) and this machine's own paths: a
# user who clones the repository has none of them. Spelled in pieces so that this file does not match itself.
SHARED = "sha" + "red"
OUTSIDE = re.compile(rf"\.\./{SHARED}\b|\b{SHARED}/spec/|/wor" r"k/main\b|/roo" r"t/")


def tracked_text_files():
    names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in names:
        path = ROOT / name
        if path.suffix in {".png", ".pdf", ".gz", ".npz"} or not path.is_file():
            continue
        yield name, path.read_text(errors="replace")


def test_method_document_is_in_the_repository():
    text = (ROOT / "docs" / "METHOD.md").read_text()
    assert text.startswith("# METHOD") and "## 15. What a faithful reproduction should show" in text
    assert "### 7.4 When a map appears: the items-per-city rule" in text


def test_no_tracked_file_references_a_path_outside_the_repository():
    offenders = []
    for name, text in tracked_text_files():
        for number, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line):
                offenders.append(f"{name}:{number}: {line.strip()}")
    assert not offenders, "paths outside the repository:\n" + "\n".join(offenders)
