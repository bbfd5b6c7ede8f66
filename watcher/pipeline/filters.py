"""Include/exclude globs on a file's path relative to the inbox."""

from __future__ import annotations

import re
from dataclasses import dataclass
from fnmatch import translate
from functools import cached_property


@dataclass(frozen=True)
class PathFilter:
    """Decides which relative paths are delivered.

    A pattern matches when it matches the whole relative path or the file's own name, so
    ``*.csv`` works at any depth. Excludes also apply to every folder on the way (``.*`` skips
    hidden folders such as a writer's ``.staging/``).
    """

    include: tuple[str, ...]
    exclude: tuple[str, ...]

    @cached_property
    def _included(self) -> re.Pattern[str] | None:
        return _one_regex(self.include)

    @cached_property
    def _excluded(self) -> re.Pattern[str] | None:
        return _one_regex(self.exclude)

    def accepts(self, rel: str) -> bool:
        """True when the file at relative path `rel` should be delivered."""
        if rel == ".watcher" or rel.startswith(".watcher/"):
            return False  # reserved for the service's own bookkeeping (cluster claims), whatever the globs
        parts = rel.split("/")
        excluded = self._excluded
        if excluded is not None and (excluded.match(rel) or any(excluded.match(part) for part in parts)):
            return False
        included = self._included
        return included is not None and bool(included.match(rel) or included.match(parts[-1]))

    def accepts_dir(self, rel_dir: str) -> bool:
        """True when a folder may hold deliverable files (not excluded by name)."""
        if rel_dir == ".watcher" or rel_dir.startswith(".watcher/"):
            return False
        excluded = self._excluded
        return excluded is None or not any(excluded.match(part) for part in rel_dir.split("/"))


def _one_regex(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    """The globs as one compiled alternation (fnmatchcase semantics: whole string, case-sensitive);
    a file is checked against every pattern on the hot path, so the globs are not re-read each time.
    """
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{translate(pattern)})" for pattern in patterns))
