"""What the tests share, one module a concept.

- `wait`: `wait_until` / `await_until`, polling a condition with a deadline (never a bare sleep).
- `net`: a free loopback port, waiting for a port to accept.
- `fs`: file writers, trees and digests of folders.
- `clock`: `FakeClock`, the clock that `Intake` and `OutboxGate` take in unit tests.
- `settings`: WATCHER_* variables with every folder in a test's folder, and `Settings` from them.
- `service`: a real `Service` in the test's event loop (`running`), and its metric values.
- `process`: one real `python -m watcher run` subprocess (`WatcherProcess`) with an environment built
  from scratch, its API client (`ApiClient`), and `run_cli` for the other commands.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
