"""The cluster metrics that the alert rules read, from a real `python -m watcher run` replica on a
throwaway PostgreSQL: `watcher_cluster_replicas` (WatcherClusterNoLeader tells cluster mode by it) and
`watcher_cluster_oldest_claim_age_seconds{replica}` (WatcherClusterClaimTooOld).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.cluster.conftest import Replicas
from tests.support.process import WatcherProcess
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

AGE = "watcher_cluster_oldest_claim_age_seconds"


def _gauges(w: WatcherProcess, name: str) -> dict[str, float]:
    """The samples of one metric of /metrics, by their `replica` label ("" for an unlabelled one)."""
    r = w.http.get("/metrics")
    assert r.status_code == 200, r.text
    return {
        sample.labels.get("replica", ""): sample.value
        for family in text_string_to_metric_families(r.text)
        for sample in family.samples
        if sample.name == name
    }


def test_the_gauges_report_live_replicas_and_the_age_of_real_claims(
    replica: Replicas, shared: Path, tmp_path: Path
) -> None:
    inbox, outbox = shared / "inbox", shared / "outbox"
    # A claim that the last replica that held it, "gone", could not hand back: a folder on its way in
    # the inbox is a symlink, which is never followed. It stays a claim until an operator acts.
    (tmp_path / "elsewhere").mkdir()
    (inbox / "via").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    left = inbox / ".watcher" / "gone" / "claims" / "via" / "left.csv"
    left.parent.mkdir(parents=True)
    left.write_bytes(b"left behind")
    # The outbox holds a file where the delivery needs a folder: every attempt fails, the file stays
    # claimed, and is retried (max_attempts keeps it from quarantine while the test looks).
    (outbox / "blocked").write_bytes(b"not a folder")

    a = replica("a", max_attempts="1000").start("ready")
    wait_until(lambda: _gauges(a, "watcher_cluster_replicas") == {"": 1.0}, 10, "one live replica (a heartbeat)")
    wait_until(lambda: _gauges(a, AGE).get("a") == 0.0, 10, "a's own series, 0 while it claims nothing")

    staging = shared / "report.part"
    staging.write_bytes(b"report")
    (inbox / "blocked").mkdir()
    os.rename(staging, inbox / "blocked" / "report.csv")  # complete on arrival
    claimed = inbox / ".watcher" / "a" / "claims" / "blocked" / "report.csv"
    wait_until(claimed.exists, 10, "the file claimed by a")

    def a_second_old() -> dict[str, float]:
        ages = _gauges(a, AGE)
        return ages if ages.get("a", 0.0) >= 1.0 else {}

    ages = wait_until(a_second_old, 10, "a's claim a second old")
    now = time.time()
    for name, path in (("a", claimed), ("gone", left)):
        # Measured at each heartbeat (2 s): from the claim's change time, never more than its real age.
        real = now - os.lstat(path).st_ctime
        assert real - 3.0 <= ages[name] <= real + 0.5, (name, ages[name], real)

    (outbox / "blocked").unlink()  # the next retry delivers it, and a holds no claim any more
    wait_until(lambda: (outbox / "blocked" / "report.csv").exists(), 15, "the delivery after the retry")
    wait_until(lambda: _gauges(a, AGE).get("a") == 0.0, 5, "a's age back to 0")
    assert _gauges(a, AGE)["gone"] > 0.0, "the claim left behind is still reported"
