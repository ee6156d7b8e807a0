"""A Secret volume as the kubelet keeps it, for the tests of components that read one."""

from __future__ import annotations

import os
from pathlib import Path


class SecretVolume:
    """A Secret volume laid out and updated the way the kubelet's atomic writer does it:
    ``<key> -> ..data/<key>``, ``..data -> ..<generation>``, and an update writes a new
    generation directory and renames a new ``..data`` link over the old one."""

    def __init__(self, root: Path, data: dict[str, bytes]) -> None:
        self.root = root
        root.mkdir()
        self.generation = 0
        self.update(data)
        for key in data:
            (root / key).symlink_to(Path("..data") / key)

    def update(self, data: dict[str, bytes]) -> None:
        self.generation += 1
        gen = self.root / f"..gen-{self.generation}"
        gen.mkdir()
        for key, value in data.items():
            (gen / key).write_bytes(value)
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(gen.name)
        old = os.readlink(self.root / "..data") if (self.root / "..data").is_symlink() else None
        os.rename(tmp, self.root / "..data")
        if old is not None:
            for f in (self.root / old).iterdir():
                f.unlink()
            (self.root / old).rmdir()
