"""Prepare what the GPU suite needs to carry to a GPU machine that has no network, within its transfer limits.

The GPU machine (one H200, Python 3.12, PyTorch, NumPy, PyArrow, Pillow, SciPy, PyYAML, Rich preinstalled) takes at
most 64 MiB per command, working tree included, and cannot pip-install from an index. So this script, run here:

1. makes the LGG data copy with ``pixeldrl prepare-data --channels 1 --foreground-only`` (FLAIR, slices with
   tumour: the paper's protocol), as Parquet;
2. downloads the Python 3.12 / manylinux x86-64 wheels the suite imports and the machine lacks: Gymnasium (the
   environment's API), MONAI (the U-Net), and Ray with its missing requirements (jsonschema and friends);
3. splits Ray's wheel (79 MB: more than one command can carry) into two parts, the first as large as the first
   command allows, with the SHA-256 of the whole wheel to check the join;
4. prints the size of everything each command carries against the limit, and the two commands to run.

Layout (``.gpu/`` is git-ignored)::

    .gpu/carry1/ray.part1                      command 1 copies it to /tmp/pixeldrl_gpu/ (kept while the machine is warm)
    .gpu/carry2/ray.part2, ray.sha256          command 2 joins, checks and installs Ray ...
    .gpu/carry2/wheels/*.whl                   ... and these, with pip --no-index --no-deps --target /tmp/site
    .gpu/carry2/lgg_flair_fg/                  the data copy

    python -m benchmarks.gpu_prepare                    # all of it
    python -m benchmarks.gpu_prepare --no-download      # data and split only, from wheels already in .gpu/download
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import shutil
import subprocess
import sys
from pathlib import Path

from rl_agents.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 64 * 2**20  # bytes one device command may carry, working tree included
MARGIN = 2 * 2**20  # room for files added to the tree between preparing and running

# what the suite imports and the GPU machine lacks (its own pip list: /work/.library/device/KINDS.md)
WHEELS = ("gymnasium", "farama-notifications", "monai", "jsonschema", "jsonschema-specifications", "referencing",
          "rpds-py")
PLATFORM_ARGS = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
                 "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
                 "--platform", "manylinux2014_x86_64"]


def working_tree_files() -> list[str]:
    """The checkout's files as a copy of it holds them: tracked and untracked-but-not-ignored (relative paths)."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, check=True).stdout
    return [p for p in out.decode().split("\0") if p and (ROOT / p).is_file()]


def tree_bytes() -> int:
    """Bytes of the working tree that travels with every command."""
    return sum((ROOT / p).stat().st_size for p in working_tree_files())


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def pinned(name: str) -> str:
    """``name==version`` of this environment's copy, so the GPU machine runs the versions the tests ran."""
    try:
        return f"{name}=={importlib.metadata.version(name)}"
    except importlib.metadata.PackageNotFoundError:
        return name


def download(names: list[str], dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *PLATFORM_ARGS, "-d", str(dest),
           *[pinned(n) for n in names]]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def split_file(src: Path, first: Path, second: Path, first_bytes: int) -> str:
    """Write ``src``'s first ``first_bytes`` bytes to ``first`` and the rest to ``second``; returns src's SHA-256."""
    digest = hashlib.sha256()
    with open(src, "rb") as f, open(first, "wb") as a, open(second, "wb") as b:
        chunk = f.read(first_bytes)
        digest.update(chunk)
        a.write(chunk)
        while chunk := f.read(2**20):
            digest.update(chunk)
            b.write(chunk)
    return digest.hexdigest()


def make_data(lgg: Path, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    rc = cli(["prepare-data", str(lgg), str(out), "--format", "lgg", "--channels", "1", "--foreground-only"])
    if rc:
        raise SystemExit(f"prepare-data failed with exit status {rc}")


def prepare(gpu: Path, lgg: Path | None, fetch: bool) -> dict:
    """Build ``gpu``/carry1 and carry2; returns the byte counts (raises SystemExit when over the limit)."""
    c1, c2, dl = gpu / "carry1", gpu / "carry2", gpu / "download"
    for d in (c1, c2):
        if d.exists():
            shutil.rmtree(d)
    (c2 / "wheels").mkdir(parents=True)
    c1.mkdir(parents=True)
    if lgg is not None:
        make_data(lgg, c2 / "lgg_flair_fg")
    if fetch:
        download(["ray", *WHEELS], dl)
    rays = sorted(dl.glob("ray-*.whl"))
    if len(rays) != 1:
        raise SystemExit(f"expected one Ray wheel in {dl}, found {[r.name for r in rays]}")
    for w in dl.glob("*.whl"):
        if w != rays[0]:
            shutil.copy2(w, c2 / "wheels" / w.name)
    tree = tree_bytes()
    first = LIMIT - tree - MARGIN
    if first <= 0:
        raise SystemExit(f"the working tree alone ({tree / 2**20:.1f} MiB) leaves no room under the 64 MiB limit")
    sha = split_file(rays[0], c1 / "ray.part1", c2 / "ray.part2", first)
    (c2 / "ray.sha256").write_text(f"{sha}  {rays[0].name}\n")
    sizes = {"tree": tree, "carry1": folder_bytes(c1), "carry2": folder_bytes(c2)}
    sizes["call1"] = sizes["tree"] + sizes["carry1"]
    sizes["call2"] = sizes["tree"] + sizes["carry2"]
    mib = {k: round(v / 2**20, 2) for k, v in sizes.items()}
    print(f"working tree {mib['tree']} MiB; command 1 carries {mib['call1']} MiB, command 2 carries {mib['call2']} MiB "
          f"(limit {LIMIT / 2**20:.0f} MiB each)")
    for f in sorted(c2.rglob("*")):
        if f.is_file() and f.parent.name != "lgg_flair_fg":
            print(f"  {f.relative_to(gpu)}: {f.stat().st_size / 2**20:.2f} MiB")
    if (c2 / "lgg_flair_fg").exists():
        print(f"  carry2/lgg_flair_fg: {folder_bytes(c2 / 'lgg_flair_fg') / 2**20:.2f} MiB")
    over = [k for k in ("call1", "call2") if sizes[k] > LIMIT]
    if over:
        raise SystemExit(f"over the {LIMIT / 2**20:.0f} MiB limit: {over} ({mib})")
    return sizes


COMMANDS = """
Run, back to back (the machine keeps /tmp only while warm, about 30 s after a command):
  device run  carry=[".gpu/carry1"]  timeout_s=120  command="bash benchmarks/gpu_run.sh stage"
  device run  carry=[".gpu/carry2"]  timeout_s=600  command="bash benchmarks/gpu_run.sh run"
then copy gpu_suite.json from the returned files to benchmarks/results/gpu_suite.json.
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / ".gpu"), help="the git-ignored folder to fill (default .gpu)")
    ap.add_argument("--lgg", default=str(ROOT.parent / "shared" / "data" / "lgg_kaggle_3m"),
                    help="the LGG folder (kaggle_3m layout)")
    ap.add_argument("--no-data", action="store_true", help="skip the data copy")
    ap.add_argument("--no-download", action="store_true", help="use the wheels already in OUT/download")
    args = ap.parse_args(argv)
    lgg = None if args.no_data else Path(args.lgg)
    if lgg is not None and not lgg.is_dir():
        ap.error(f"--lgg {lgg}: no such folder")
    prepare(Path(args.out), lgg, fetch=not args.no_download)
    print(COMMANDS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
