"""Files the service does not deliver, each explained once: the rule that kept it out, in the log and
in ``watcher_files_skipped_total{reason}``.

Reasons: ``excluded`` (a WATCHER_EXCLUDE pattern you set), ``temporary`` (a default WATCHER_EXCLUDE
pattern: a writer's temporary name, renamed a moment later), ``not_included`` (no WATCHER_INCLUDE
pattern matches), ``symlink`` (never followed) and ``special`` (a fifo, socket or device).

"Once" is a bounded memory of the paths already reported (least recently seen forgotten first), so a
rescan every 30 s repeats nothing; a path seen again after being forgotten is reported again.
"""

from __future__ import annotations

from collections import OrderedDict
from fnmatch import fnmatchcase
from typing import Literal

from structlog.typing import FilteringBoundLogger

from watcher.config import DEFAULT_EXCLUDE
from watcher.logging import get_logger
from watcher.metrics import Metrics
from watcher.pipeline.filters import PathFilter

log = get_logger(__name__)

Reason = Literal["excluded", "temporary", "not_included", "symlink", "special"]
REASONS: tuple[Reason, ...] = ("excluded", "temporary", "not_included", "symlink", "special")
REMEMBER = 16384  # paths kept in memory as already reported
RESERVED_DIR = ".watcher"  # <inbox>/.watcher/ is the service's own: never reported


def rejection(path_filter: PathFilter, rel: str, is_dir: bool = False) -> tuple[Reason, str]:
    """Why `path_filter` keeps `rel` out, as (reason, the rule in words); only for a rejected path."""
    parts = rel.split("/")
    for pattern in path_filter.exclude:
        if (not is_dir and fnmatchcase(rel, pattern)) or any(fnmatchcase(part, pattern) for part in parts):
            reason: Reason = "temporary" if pattern in DEFAULT_EXCLUDE else "excluded"
            return reason, f"WATCHER_EXCLUDE pattern {pattern}"
    return "not_included", f"no WATCHER_INCLUDE pattern matches ({','.join(path_filter.include)})"


class SkipLog:
    """Reports each skipped path once: one log line and one count per path and reason."""

    def __init__(
        self,
        metrics: Metrics,
        path_filter: PathFilter,
        remember: int = REMEMBER,
        logger: FilteringBoundLogger | None = None,
    ) -> None:
        """Count on `metrics`; `path_filter` names the rule behind a filtered path."""
        self._log = logger or log
        self._counter = metrics.files_skipped
        self._filter = path_filter
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._remember = remember

    def _first(self, rel: str) -> bool:
        seen = self._seen
        if rel in seen:
            seen.move_to_end(rel)  # still there: a rescan keeps it remembered
            return False
        seen[rel] = None
        if len(seen) > self._remember:
            seen.popitem(last=False)
        return True

    def filtered(self, rel: str, is_dir: bool = False) -> None:
        """`rel` (a file, or a folder whose files are never looked at) was kept out by the filter."""
        if rel == RESERVED_DIR or rel.startswith(RESERVED_DIR + "/"):
            return
        parts = rel.split("/")
        for depth in range(1, len(parts) if not is_dir else len(parts) + 1):
            if not self._filter.accepts_dir("/".join(parts[:depth])):
                rel, is_dir = "/".join(parts[:depth]), True  # an excluded folder: report it, not each file
                break
        if not self._first(rel):
            return
        reason, rule = rejection(self._filter, rel, is_dir)
        self._report(rel + "/" if is_dir else rel, reason, rule)

    def ignored(self, rel: str, reason: Reason, rule: str) -> None:
        """`rel` is not a regular file (a symlink, fifo, socket or device) and is never delivered."""
        if self._first(rel):
            self._report(rel, reason, rule)

    def _report(self, rel: str, reason: Reason, rule: str) -> None:
        self._counter.labels(reason=reason).inc()
        # A writer's temporary name is renamed a moment later: at info it would double every upload's
        # log. The patterns you set, and files that will never be delivered, are worth a line.
        if reason == "temporary":
            self._log.debug("file.skipped", path=rel, reason=reason, rule=rule)
        else:
            self._log.info("file.skipped", path=rel, reason=reason, rule=rule)
