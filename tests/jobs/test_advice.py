"""Every piece of advice that names a jobs call works verbatim against a fresh service (issue 10, item 7).

The advice comes from where operators read it: the ``action`` of a real ``.error.json``, the curl
lines of README.md and docs/*.md (the quick start, the Jobs API examples in docs/http-api.md, the
runbooks in docs/operations.md) and the alert descriptions of deploy/prometheus/rules.yml. Only the
address and the token are filled in; ``<job id>`` in a runbook stands for a job the service has, here
the built-in ``retry_failed``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable, Iterator

import pytest
import yaml

from tests.support import REPO
from tests.support.process import AUTH, TOKEN, WatcherProcess
from tests.support.wait import wait_until

pytestmark = pytest.mark.timeout(90)

CALL = re.compile(r"\b(GET|POST|PATCH|DELETE) (/jobs/\S*[\w}])")


def test_the_error_json_action_works_verbatim_on_a_fresh_service(make_watcher: Callable[..., WatcherProcess]) -> None:
    w = make_watcher(max_attempts="1")
    jobs = {job["id"]: job for job in w.http.get("/jobs").json()["jobs"]}
    assert jobs["retry_failed"]["kind"] == "retry_failed" and jobs["retry_failed"]["paused"] is True
    # A file that cannot be delivered: a plain file stands where its folder must be (never replaced).
    (w.outbox / "sub").write_bytes(b"in the way")
    (w.inbox / "sub").mkdir()
    (w.inbox / "sub" / "a.txt").write_bytes(b"payload")
    sidecar = w.failed / "sub" / "a.txt.error.json"
    wait_until(sidecar.is_file, 20, "the file to be quarantined with its .error.json")

    action = json.loads(sidecar.read_text())["action"]
    calls = CALL.findall(action)
    assert calls, f"no HTTP call in the advice: {action!r}"
    (w.outbox / "sub").unlink()  # "fix the cause"
    for method, path in calls:
        r = w.http.request(method, path, headers=AUTH)
        assert r.status_code == 200, (action, r.status_code, r.text)
    wait_until(lambda: (w.outbox / "sub" / "a.txt").is_file(), 20, "the retried file to be delivered")
    assert (w.outbox / "sub" / "a.txt").read_bytes() == b"payload"
    assert not (w.failed / "sub" / "a.txt").exists() and not sidecar.exists()
    run = w.http.runs("retry_failed")[0]
    assert run["outcome"] == "success" and run["detail"]["files_moved"] == 1, run


def readme_curl_commands() -> Iterator[str]:
    """Each curl command of README.md and docs/*.md that calls /jobs, continuation lines joined, in order."""
    docs = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    lines = iter([line for doc in docs for line in doc.read_text().splitlines()])
    for line in lines:
        inline = re.findall(r"`(curl [^`]*/jobs[^`]*)`", line)
        if inline:
            yield from inline
            continue
        if not line.startswith("curl ") or "/jobs" not in line:
            continue
        command = line
        while command.endswith("\\") or not _complete(command):  # a continuation, or a quoted JSON body
            command = command.removesuffix("\\") + "\n" + next(lines)
        yield command


def _complete(command: str) -> bool:
    try:
        shlex.split(command, comments=True)
    except ValueError:  # "No closing quotation"
        return False
    return True


def test_every_jobs_call_in_the_readme_works_verbatim_on_a_fresh_service(
    make_watcher: Callable[..., WatcherProcess],
) -> None:
    if shutil.which("curl") is None:
        pytest.skip("README curl advice NOT checked: curl missing")
    w = make_watcher()
    env = {
        **os.environ,
        "TOKEN": TOKEN,
        "WATCHER_API_TOKEN": TOKEN,
        # docs/http-api.md's own `export WATCHER=... AUTH=...` line
        "WATCHER": w.url,
        "AUTH": f"Authorization: Bearer {TOKEN}",
    }
    commands = list(readme_curl_commands())
    assert any("/jobs/retry_failed/run" in c for c in commands), "the quarantine runbook names retry_failed"
    for command in commands:
        concrete = command.replace("localhost:8080", f"127.0.0.1:{w.port}").replace("<job id>", "retry_failed")
        argv = shlex.split(_expand(concrete, env), comments=True)
        # the last -w wins: the HTTP status on a line of its own after the body
        done = subprocess.run([*argv, "-w", "\n%{http_code}"], capture_output=True, text=True, env=env, timeout=20)
        status = done.stdout.rsplit("\n", 1)[-1]
        assert done.returncode == 0 and status.startswith("2"), (command, done.stdout, done.stderr)


def _expand(command: str, env: dict[str, str]) -> str:
    """$NAME as the shell expands it (these commands use no other expansion)."""
    return re.sub(r"\$(\w+)", lambda m: env.get(m.group(1), m.group(0)), command)


def test_the_alert_advice_names_calls_that_work_for_every_exported_job(
    make_watcher: Callable[..., WatcherProcess],
) -> None:
    w = make_watcher()
    rules = yaml.safe_load((REPO / "deploy" / "prometheus" / "rules.yml").read_text())
    texts = [
        text
        for group in rules["groups"]
        for rule in group["rules"]
        for text in (rule.get("annotations") or {}).values()
    ]
    label = "{{ $labels.job_id }}"
    calls = [call for text in texts for call in CALL.findall(" ".join(text.split()).replace(label, "JOB_ID"))]
    assert calls, "rules.yml names no jobs call"
    job_ids = set(re.findall(r'watcher_job_runs_total\{job_id="([^"]+)"', w.http.get("/metrics").text))
    assert {"rescan", "retry_failed"} <= job_ids
    for method, template in calls:
        for job_id in job_ids:
            path = template.replace("JOB_ID", job_id)
            r = w.http.request(method, path, headers=AUTH)
            assert r.status_code == 200, (template, job_id, r.status_code, r.text)
