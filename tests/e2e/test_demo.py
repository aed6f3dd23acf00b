"""`bridge demo` as a real process, and its operator page in headless Chromium.

The demo runs as the README's first command runs it (the installed `bridge` script): it must start
its server, send its signed sample deliveries, finish their builds (recorded StartBuild requests here:
the CodeBuild stand-in, so the test does not depend on a build tool), print the page's URL, and stop
cleanly, server included, on SIGTERM to its PID. Chromium (Debian's `chromium` and `chromium-driver`,
driven by selenium) loads the page, filters it by repository and by commit, and opens a delivery;
screenshots land in the test's temporary directory (`BRIDGE_SCREENSHOTS=DIR` keeps copies).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.wait import WebDriverWait

from bridge.demo import SECRET_ENV
from tests.e2e.test_server import free_port

READY_TIMEOUT = 180.0
STOP_TIMEOUT = 60.0
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PUSH_SHA = "6113728f27ae82c7b1a177c8d03f9e96e0adf246"  # the published GitHub push example's commit


@dataclass
class Demo:
    process: subprocess.Popen[str]
    state_dir: Path
    url: str = ""
    lines: list[str] = field(default_factory=list)
    _queue: queue.Queue[str | None] = field(default_factory=queue.Queue)

    def read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for_line(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            if line.startswith(prefix):
                return line
        log = self.state_dir / "server.log"
        tail = log.read_text()[-3000:] if log.exists() else ""
        raise AssertionError(f"no line {prefix!r} from bridge demo:\n" + "\n".join(self.lines) + "\n" + tail)


def _bridge_script() -> str:
    script = Path(sys.executable).with_name("bridge")
    return str(script) if script.exists() else shutil.which("bridge") or "bridge"


@contextlib.contextmanager
def running_demo(tmp_path_factory: pytest.TempPathFactory, builder: str) -> Iterator[Demo]:
    """`bridge demo` started as a user starts it, until its ready line; stopped by PID afterwards."""
    state_dir = tmp_path_factory.mktemp("demo-state")
    cwd = tmp_path_factory.mktemp("demo-cwd")
    env = {name: value for name, value in os.environ.items() if name not in SECRET_ENV.values()}
    env["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("xdg"))
    process = subprocess.Popen(
        [
            _bridge_script(),
            "demo",
            "--port",
            str(free_port()),
            "--state-dir",
            str(state_dir),
            "--builder",
            builder,
        ],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    running = Demo(process, state_dir)
    reader = threading.Thread(target=running.read, daemon=True)
    reader.start()
    try:
        ready = running.wait_for_line("bridge demo is ready: ", READY_TIMEOUT)
        running.url = ready.split(": ", 1)[1].strip()
        yield running
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)  # by PID, as a service manager would
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        reader.join(10)
        server_pid = state_dir / "server.pid"
        if server_pid.exists():
            pid = int(server_pid.read_text())
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)  # only if the demo left it behind; the last test fails then


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    with running_demo(tmp_path_factory, "record") as running:
        yield running


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode("utf-8"))


def test_bridge_demo_builds_its_sample_deliveries_and_shows_them_on_the_page(demo: Demo) -> None:
    text = "\n".join(demo.lines)
    # Secrets are env: references in the config; their values are printed once, for this run.
    config = (demo.state_dir / "bridge.toml").read_text()
    for name in SECRET_ENV.values():
        assert f"env:{name}" in config
        (printed,) = [line for line in demo.lines if line.strip().startswith(f"{name}=")]
        assert printed.split("=", 1)[1].strip() not in config
    assert "GitHub push to master" in text
    assert "ignored: GitHub event 'issues' does not trigger builds" in text
    # Four builds, each StartBuild request recorded as it would be sent (no AWS call was made).
    requests = sorted((demo.state_dir / "requests").glob("*.json"))
    assert len(requests) == 4
    first = json.loads(requests[0].read_text())
    assert first["projectName"] == "bridge-demo"
    assert first["sourceVersion"] == PUSH_SHA
    # The page shows the finished build of the push and the status its commit got.
    page = _get(demo.url + "?commit=" + PUSH_SHA[:10])
    assert "SUCCEEDED" in page
    assert "Codertocat/Hello-World" in page
    assert "success: Build #" in page
    # State lives in the state directory, nowhere else.
    assert (demo.state_dir / "bridge.sqlite3").exists()


# -- the page in Chromium ----------------------------------------------------------------------------


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    for program in (CHROMIUM, CHROMEDRIVER):
        if not Path(program).exists():
            pytest.fail(
                f"{program} is missing: apt-get install chromium chromium-driver (scripts/test does, as root)"
            )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _shot(driver: WebDriver, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    assert driver.save_screenshot(str(path))
    keep = os.environ.get("BRIDGE_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / path.name)
    return path


def _navigate(driver: WebDriver, click: str, by: str = By.ID) -> None:
    """Click what navigates (a submit button, a link) and wait until the new page replaced the old."""
    old = driver.find_element(By.TAG_NAME, "html")
    driver.find_element(by, click).click()
    WebDriverWait(driver, 30).until(expected_conditions.staleness_of(old))
    WebDriverWait(driver, 30).until(lambda d: d.execute_script("return document.readyState") == "complete")


def _column(driver: WebDriver, table: str, index: int) -> list[str]:
    cells = driver.find_elements(By.CSS_SELECTOR, f"#{table} tbody tr[data-delivery] td:nth-child({index})")
    return [cell.text for cell in cells]


def test_the_operator_page_in_chromium_filters_and_opens_a_delivery(
    demo: Demo, browser: WebDriver, tmp_path: Path
) -> None:
    browser.get(demo.url)
    assert browser.title == "bridge · deliveries"
    providers = _column(browser, "deliveries", 2)
    assert sorted(set(providers)) == ["github", "gitlab"]
    assert len(providers) == 5
    assert "ignored" in _column(browser, "deliveries", 6)
    _shot(browser, tmp_path, "overview")

    # Filter by repository through the form, as a user would.
    field = browser.find_element(By.ID, "filter-repository")
    field.clear()
    field.send_keys("Codertocat/Hello-World")
    _navigate(browser, "filter-submit")
    assert set(_column(browser, "deliveries", 4)) == {"Codertocat/Hello-World"}
    assert len(_column(browser, "deliveries", 4)) == 3  # push, pull request, the ignored issue

    # Then by commit: only the push.
    field = browser.find_element(By.ID, "filter-commit")
    field.send_keys(PUSH_SHA[:8])
    _navigate(browser, "filter-submit")
    assert _column(browser, "deliveries", 3) == ["push"]
    build_status = browser.find_element(By.CSS_SELECTOR, "#builds tbody tr[data-build] td:nth-child(4)").text
    assert build_status == "SUCCEEDED"
    commit_status = browser.find_element(By.CSS_SELECTOR, "#commits tbody tr td:nth-child(3)").text
    assert commit_status.startswith("success: Build #")
    _shot(browser, tmp_path, "filtered")

    # Open the delivery: its outcome, its build and the StartBuild request it made.
    _navigate(browser, "#deliveries a.detail", By.CSS_SELECTOR)
    assert browser.find_element(By.ID, "delivery-outcome").text == "started"
    request = json.loads(browser.find_element(By.ID, "start-build").text)
    assert request["projectName"] == "bridge-demo"
    assert request["sourceVersion"] == PUSH_SHA
    assert browser.find_element(By.ID, "delivery-commit-status").text.startswith("success:")
    _shot(browser, tmp_path, "delivery")


def test_stopping_the_demo_by_pid_stops_its_server(demo: Demo) -> None:
    """Runs last in this module (pytest keeps file order): it ends the module's demo."""
    server_pid = int((demo.state_dir / "server.pid").read_text())
    os.kill(demo.process.pid, signal.SIGTERM)
    assert demo.process.wait(STOP_TIMEOUT) == 0
    demo.wait_for_line("bridge demo stopped", 10)
    with pytest.raises(ProcessLookupError):
        os.kill(server_pid, 0)
    with pytest.raises(urllib.error.URLError):  # connection refused: nothing listens there any more
        _get(demo.url + "healthz")


def test_bridge_demo_builds_with_the_local_builder_when_a_build_tool_is_installed(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """buildah is here (scripts/test installs it): the samples are built for real, from the demo's own
    repository served over git's smart HTTP, each commit getting the local build's status."""
    if shutil.which("buildah") is None:
        pytest.fail("buildah is missing: apt-get install buildah (scripts/test does, as root)")
    with running_demo(tmp_path_factory, "auto") as local:
        text = "\n".join(local.lines)
        assert "builds: the local builder with buildah" in text
        built = [line for line in local.lines if "SUCCEEDED; the commit would get 'success: Build #" in line]
        assert len(built) == 4, text
        page = _get(local.url)
        assert page.count("local:") >= 4  # the local builder's build ids
        logs = list((local.state_dir / "local" / "logs").glob("*.log"))
        assert len(logs) == 4
        assert all("Successfully tagged localhost/bridge/" in log.read_text() for log in logs)
        server_pid = int((local.state_dir / "server.pid").read_text())
        os.kill(local.process.pid, signal.SIGINT)  # Ctrl-C
        assert local.process.wait(STOP_TIMEOUT) == 0
        with pytest.raises(ProcessLookupError):
            os.kill(server_pid, 0)
