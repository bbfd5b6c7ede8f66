"""Include/exclude globs on a file's path relative to the inbox."""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase


@dataclass(frozen=True)
class PathFilter:
    """Decides which relative paths are delivered.

    A pattern matches when it matches the whole relative path or the file's own name, so
    ``*.csv`` works at any depth. Excludes also apply to every folder on the way (``.*`` skips
    hidden folders such as a writer's ``.staging/``).
    """

    include: tuple[str, ...]
    exclude: tuple[str, ...]

    def accepts(self, rel: str) -> bool:
        """True when the file at relative path `rel` should be delivered."""
        if rel == ".watcher" or rel.startswith(".watcher/"):
            return False  # reserved for the service's own bookkeeping (cluster claims), whatever the globs
        parts = rel.split("/")
        for pattern in self.exclude:
            if fnmatchcase(rel, pattern) or any(fnmatchcase(part, pattern) for part in parts):
                return False
        name = parts[-1]
        return any(fnmatchcase(rel, pattern) or fnmatchcase(name, pattern) for pattern in self.include)

    def accepts_dir(self, rel_dir: str) -> bool:
        """True when a folder may hold deliverable files (not excluded by name)."""
        if rel_dir == ".watcher" or rel_dir.startswith(".watcher/"):
            return False
        parts = rel_dir.split("/")
        return not any(fnmatchcase(part, pattern) for pattern in self.exclude for part in parts)
