"""Turning command-line style paths (files and folders) into the files they name."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


def expand_paths(paths: Iterable[str | os.PathLike[str]] | str | os.PathLike[str], *,
                 skip_suffixes: Iterable[str] = ()) -> list[Path]:
    """Files as given; folders searched recursively, in a stable (sorted) order.

    Inside folders, hidden files and files ending in one of `skip_suffixes` (e.g.
    ".json" sidecars next to images) are left out; a file named explicitly is kept.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    skip = tuple(skip_suffixes)
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")
                              and not (skip and f.name.endswith(skip))))
        else:
            out.append(p)
    return out
