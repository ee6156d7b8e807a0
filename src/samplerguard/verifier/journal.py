"""The verifier's durable journal: what was judged, and whether its results were delivered.

Append-only JSON lines in the verifier's state directory, each written with one ``write`` and
``fsync``:

* ``{"judged": KEY, "root": HEX, "results": [...]}``: the verdict on a trajectory, written
  *before* the results are delivered anywhere;
* ``{"challenge": KEY, "steps": [...]}``: the steps drawn for a challenge, before any
  opening is fetched;
* ``{"delivered": KEY}``: the results reached the audit log / the operator.

On restart: everything judged is skipped (never re-challenged, so a prover cannot get a second
roll of the dice), and judged-but-undelivered results are delivered again (nothing is lost; a
crash between delivery and its mark can deliver a result twice, never zero times). A
truncated last line from a crash mid-write is ignored.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["Journal"]

log = logging.getLogger(__name__)


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.judged: dict[str, str] = {}  # key → root
        self.roots: dict[str, str] = {}  # root → key
        self.pending: dict[str, list[dict[str, Any]]] = {}
        self.challenges: dict[str, list[int]] = {}
        self._load()
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)

    def _load(self) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb") as fh:
            for raw in fh:
                try:
                    doc = json.loads(raw)
                except ValueError:
                    log.warning("journal: skipping a truncated line")
                    continue
                if not isinstance(doc, dict):
                    continue
                if "judged" in doc:
                    key, root = str(doc["judged"]), str(doc.get("root", ""))
                    self.judged[key] = root
                    if root:
                        self.roots[root] = key
                    self.pending[key] = list(doc.get("results", []))
                elif "challenge" in doc and isinstance(doc.get("steps"), list):
                    self.challenges[str(doc["challenge"])] = [int(x) for x in doc["steps"]]
                elif "delivered" in doc:
                    self.pending.pop(str(doc["delivered"]), None)

    def _append(self, doc: dict[str, Any]) -> None:
        data = (json.dumps(doc, separators=(",", ":"), sort_keys=True) + "\n").encode()
        os.write(self._fd, data)
        os.fsync(self._fd)

    def challenge(self, key: str, draw: Callable[[], list[int]]) -> list[int]:
        """The steps challenged for ``key``: drawn once, journaled before any opening is
        fetched, and reused if the check is interrupted, so a prover cannot time out a bad
        draw to get a new one."""
        with self._lock:
            steps = self.challenges.get(key)
            if steps is None:
                steps = draw()
                self._append({"challenge": key, "steps": steps})
                self.challenges[key] = steps
            return steps

    def is_judged(self, key: str) -> bool:
        with self._lock:
            return key in self.judged

    def judged_root(self, key: str) -> str | None:
        """The root ``key`` was judged with, or ``None`` when it was never judged."""
        with self._lock:
            return self.judged.get(key)

    def root_owner(self, root: str) -> str | None:
        with self._lock:
            return self.roots.get(root)

    def record(self, key: str, root: str, results: list[dict[str, Any]]) -> None:
        with self._lock:
            self._append({"judged": key, "root": root, "results": results})
            self.judged[key] = root
            if root:
                self.roots.setdefault(root, key)
            self.pending[key] = results
            self.challenges.pop(key, None)

    def delivered(self, key: str) -> None:
        with self._lock:
            self._append({"delivered": key})
            self.pending.pop(key, None)

    def undelivered(self) -> dict[str, list[dict[str, Any]]]:
        with self._lock:
            return dict(self.pending)

    def close(self) -> None:
        os.close(self._fd)
