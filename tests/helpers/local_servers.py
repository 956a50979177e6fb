"""Servers and a browser that tests start on localhost: a free port, headless Chromium, stopping a process group."""

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"  # screenshots kept by the tests (git-ignored)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
                  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--window-size=1400,2400",
                  "--virtual-time-budget=20000"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chromium() -> str:
    """Headless Chromium's command, or the test is skipped (.ci/run installs Debian's chromium)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no Chromium on this machine (.ci/run installs Debian's chromium): the UI was not rendered")
    return browser


def render(browser: str, url: str, shot: Path) -> str:
    """Screenshot `url` into `shot` with headless Chromium; returns the rendered DOM."""
    flags = [*CHROMIUM_FLAGS, f"--user-data-dir={ARTIFACTS / 'chromium-profile'}"]
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        subprocess.run([browser, *flags, f"--screenshot={shot}", url], capture_output=True, timeout=120)
        return subprocess.run([browser, *flags, "--dump-dom", url], capture_output=True, text=True,
                              timeout=120).stdout
    finally:
        shutil.rmtree(ARTIFACTS / "chromium-profile", ignore_errors=True)


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM a process started with `start_new_session=True` and everything it started; SIGKILL what outlives
    20 s. Returns once the group is gone."""
    def alive() -> bool:
        process.poll()  # reap the leader, or it counts as a member
        try:
            os.killpg(process.pid, 0)
            return True
        except ProcessLookupError:
            return False

    for sig, grace in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        if not alive():
            return
        os.killpg(process.pid, sig)
        deadline = time.time() + grace
        while alive() and time.time() < deadline:
            time.sleep(0.2)
