"""A virtual environment with the GPU image's package set, made on CPU from the one ``make`` installs.

The GPU machines this project borrows run a fixed image: torch, triton, pytest, numpy, matplotlib, tqdm,
pytorch-lightning and torchmetrics, **without** ruff, mkdocs, pytest-markdown-docs or jsonargparse, and without
network. ``make gpu-check`` must run there as it is. To test that on CPU, this script builds a bare virtual
environment (no pip) and links into its ``site-packages`` exactly those distributions and what they require,
taken from the running environment (the dev one): nothing else is importable, no entry point of an excluded
plugin is visible, and nothing is downloaded.

    python .ci/gpu_image_env.py DIR      # then: DIR/bin/python .ci/gpu_check.py --dry-run
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import pathlib
import re
import subprocess
import sys
import sysconfig

GPU_IMAGE = ["torch", "triton", "pytest", "numpy", "matplotlib", "tqdm", "pytorch-lightning", "torchmetrics"]
NOT_ON_THE_IMAGE = {"ruff", "mkdocs", "pytest-markdown-docs", "jsonargparse"}


def _name(requirement: str) -> str:
    return re.split(r"[\s;\[<>=!~(]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def closure(names: list[str]) -> set[str]:
    """The distributions ``names`` need (installed ones, extras and environment markers honoured, no extras)."""
    from packaging.requirements import Requirement

    todo, seen = [n.lower() for n in names], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional requirement that is not installed
        seen.add(name)
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(_name(text))
    return seen


def build(target: pathlib.Path, packages: list[str] = GPU_IMAGE) -> pathlib.Path:
    """Create (or refresh) the environment at ``target`` with ``packages`` and what they require; returns its
    python. (``packages=["torch", "triton"]``: what ``pip install fusedlayers`` without extras installs.)"""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--clear", str(target)], check=True)
    purelib = pathlib.Path(
        sysconfig.get_path("purelib", vars={"base": str(target), "platbase": str(target)})
    )  # target/lib/pythonX.Y/site-packages
    wanted = closure(packages)
    leaked = wanted & NOT_ON_THE_IMAGE
    if leaked:
        raise RuntimeError(f"the GPU image's package set pulled in {sorted(leaked)}")
    for name in sorted(wanted):
        dist = metadata.distribution(name)
        for top in {pathlib.PurePath(str(f)).parts[0] for f in dist.files or []}:
            if top in ("..", "__pycache__"):
                continue
            source = pathlib.Path(dist.locate_file(top))
            link = purelib / top
            if source.exists() and not link.exists():
                os.symlink(source, link)
    return target / "bin" / "python"


if __name__ == "__main__":
    print(build(pathlib.Path(sys.argv[1])))
