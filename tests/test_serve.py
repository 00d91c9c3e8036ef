"""`workbench serve`, `panel serve notebooks/dashboard.ipynb` and the CLI's refusals."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from serving import REPO, free_port, get, running, workbench_command

pytestmark = pytest.mark.slow


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(workbench_command() + list(args), capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def assert_dashboard_page(status: int, html: str) -> None:
    assert status == 200, html[:500]
    assert "docs_json" in html and "data-root-id" in html  # a rendered Bokeh document
    assert "fastlisttemplate" in html  # the dashboard's template, not an error page
    # every script and stylesheet from this server (tests/test_offline.py checks the browser)
    for outside in ("fonts.googleapis.com", "cdn.holoviz.org", "cdn.bokeh.org", "cdn.jsdelivr.net"):
        assert outside not in html


def test_serve_answers_with_the_dashboard():
    port = free_port()
    url = f"http://127.0.0.1:{port}/workbench"
    with running(workbench_command() + ["serve", "--port", str(port)], url) as (proc, log):
        status, html = get(url)
        assert_dashboard_page(status, html)
        assert "<title>workbench</title>" in html
        assert f"workbench dashboard: http://localhost:{port}/workbench" in log.read_text()
        assert proc.poll() is None


def test_basic_auth_and_origins_reach_panel(monkeypatch, capsys):
    import panel as pn

    from workbench import cli

    calls = []
    monkeypatch.setattr(pn, "serve", lambda panels, **kw: calls.append((panels, kw)))
    monkeypatch.delenv(cli.PASSWORD_ENV, raising=False)
    assert cli.main(["serve", "--port", "5123"]) == 0
    (panels, kw), = calls
    assert list(panels) == ["workbench"] and callable(panels["workbench"])
    assert kw["address"] == "127.0.0.1" and kw["port"] == 5123 and kw["show"] is False
    assert "basic_auth" not in kw
    assert set(kw["websocket_origin"]) == {"localhost:5123", "127.0.0.1:5123"}
    assert "workbench dashboard: http://localhost:5123/workbench" in capsys.readouterr().out

    calls.clear()
    monkeypatch.setenv(cli.PASSWORD_ENV, "correct-horse")
    assert cli.main(["serve", "--port", "5124", "--address", "0.0.0.0", "--expose",
                     "--allow-websocket-origin", "lab.example.org:5124"]) == 0
    (_, kw), = calls
    assert kw["basic_auth"] == "correct-horse" and len(kw["cookie_secret"]) >= 32
    assert kw["address"] == "0.0.0.0" and "lab.example.org:5124" in kw["websocket_origin"]
    assert "*" not in kw["websocket_origin"]


def test_serve_makes_panel_serve_its_resources_itself(monkeypatch):
    import panel as pn
    from bokeh.settings import settings
    from panel.io.resources import use_cdn

    from workbench import cli

    monkeypatch.delenv("BOKEH_RESOURCES", raising=False)
    monkeypatch.setattr(settings.resources, "_user_value", settings.resources._user_value)
    monkeypatch.setattr(pn, "serve", lambda panels, **kw: None)
    assert cli.main(["serve", "--port", "5125"]) == 0
    assert settings.resources() == "server" and not use_cdn()
    assert os.environ["BOKEH_RESOURCES"] == "server"  # and for any server it starts


def test_panel_serve_of_the_notebook_answers():
    panel = shutil.which("panel")
    assert panel, "the 'panel' command is missing"
    port = free_port()
    url = f"http://127.0.0.1:{port}/dashboard"
    cmd = [panel, "serve", "notebooks/dashboard.ipynb", "--port", str(port),
           "--address", "127.0.0.1", "--allow-websocket-origin", f"127.0.0.1:{port}"]
    with running(cmd, url):
        status, html = get(url, timeout=60)
        assert_dashboard_page(status, html)


@pytest.mark.parametrize("args", [
    ["--address", "0.0.0.0"],
    ["--address", "0.0.0.0", "--basic-auth", "correct-horse"],  # no --expose
    ["--address", "192.168.1.4", "--expose"],  # no password
    ["--address", "0.0.0.0", "--expose", "--basic-auth", "short"],
])
def test_refuses_to_expose_without_auth(args, monkeypatch, capsys):
    import panel as pn

    from workbench import cli

    monkeypatch.delenv(cli.PASSWORD_ENV, raising=False)
    monkeypatch.setattr(pn, "serve", lambda *a, **k: pytest.fail("must not serve"))
    assert cli.main(["serve", *args]) == 2
    err = capsys.readouterr().err
    assert ("refusing to listen on" in err and "--expose" in err and "--basic-auth" in err) \
        or "at least 8 characters" in err


def test_the_command_exits_non_zero_on_a_public_address():
    result = run_cli("serve", "--address", "0.0.0.0", "--port", str(free_port()))
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0" in result.stderr and "--basic-auth" in result.stderr


def test_help():
    result = run_cli("--help")
    assert result.returncode == 0
    assert "serve" in result.stdout and "train-default" in result.stdout
    serve = run_cli("serve", "--help")
    assert serve.returncode == 0
    for flag in ("--port", "--address", "--show", "--no-show", "--expose", "--basic-auth"):
        assert flag in serve.stdout


def test_train_default_uses_the_cache(capsys):
    from workbench import cli

    assert cli.main(["train-default"]) == 0
    out = capsys.readouterr().out
    assert "default model ready (test accuracy" in out and "cached in" in out


def test_loopback_detection():
    from workbench.cli import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert is_loopback("127.0.1.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")
    assert not is_loopback("example.org")
