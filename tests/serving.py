"""Helpers to run a dashboard server in a subprocess for the served and browser tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT = 120.0


def wait_until(predicate, timeout: float = 120.0, what: str = "condition", every: float = 0.2):
    """Poll ``predicate()`` until it returns something truthy (returned), or fail after
    ``timeout`` seconds naming ``what``. Generous by default: a bound for a loaded machine, never a
    timing assertion."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def workbench_command() -> list[str]:
    """The installed ``workbench`` console script (``pip install -e .`` makes it)."""
    exe = shutil.which("workbench")
    if exe is None:
        raise AssertionError("the 'workbench' command is missing: run `pip install -e . --no-deps`")
    return [exe]


def get(url: str, timeout: float = 30.0) -> tuple[int, str]:
    """``(status, body)`` of a GET without following redirects."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(url, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode("utf-8", "replace")


@contextmanager
def running(cmd: list[str], url: str, timeout: float = START_TIMEOUT):
    """Start ``cmd``, wait until ``url`` answers, yield ``(process, log_path)``, then stop it."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    log = Path(tempfile.mkstemp(prefix="workbench-serve-", suffix=".log")[1])
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"{cmd} exited with {proc.returncode}:\n{log.read_text()}")
            try:
                urllib.request.urlopen(url, timeout=5).close()
                break
            except urllib.error.HTTPError:
                break  # it answers (e.g. a redirect to the login page)
            except (urllib.error.URLError, ConnectionError, socket.timeout):
                if time.monotonic() > deadline:
                    raise AssertionError(f"{url} did not answer within {timeout:.0f} s:\n"
                                         f"{log.read_text()}") from None
                time.sleep(0.5)
        yield proc, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        log.unlink(missing_ok=True)


def python_command(*args: str) -> list[str]:
    return [sys.executable, *args]
