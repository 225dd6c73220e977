"""Every `bifrost` command and subcommand, called with missing, unknown and malformed arguments, answers with a
usage error: exit status 2, one short paragraph naming the flag or argument, a hint naming the command, no traceback.

The command tree is walked, not listed, so a new command is fuzzed the day it is added. Every case runs in process
through `bifrost.cli.run`, what the executable calls (the command tree is built once per process, so a case takes
milliseconds); the mistakes issue 15 found, which the commands themselves catch, are named one by one; and each kind of
usage error, and help, also goes through the real `bifrost` executable, where the exit status is what a shell sees."""
from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from enum import Enum
from pathlib import Path

import pytest
import typer

from bifrost.cli import app, run

EXE = Path(sys.executable).with_name("bifrost")
BAD = "%bogus%"


def leaves(cmd=None, path=()):
    "(path, command) of every command that runs (not the groups)."
    cmd = cmd or typer.main.get_command(app)
    subs = getattr(cmd, "commands", None)
    if subs is None:
        yield list(path), cmd
        return
    for name, sub in subs.items():
        yield from leaves(sub, path + (name,))


def malformable(p) -> bool:
    "A parameter some value must be refused for: it is typed, or checked by a callback."
    t = getattr(p, "bare_type", None)
    return not getattr(p, "is_flag", False) and (p.callback is not None or t in (int, float, Path)
                                                 or (isinstance(t, type) and issubclass(t, Enum)))


def cases():
    "(id, argv, what the message must name) for every command: unknown option, missing arguments, malformed values."
    for path, cmd in leaves():
        name = " ".join(path)
        yield f"{name} unknown", path + ["--no-such-flag"], "--no-such-flag"
        required = [p for p in cmd.params if p.required]
        if required:
            yield f"{name} missing", path, "Missing"
        for p in cmd.params:
            if malformable(p) and p.param_type_name == "option":
                numeric = getattr(p, "bare_type", None) in (int, float)
                yield f"{name} {p.opts[0]}={BAD}", path + [p.opts[0], BAD], p.opts[0]
                if numeric:
                    yield f"{name} {p.opts[0]}=-1000000", path + [p.opts[0], "-1000000"], p.opts[0]
            elif malformable(p):  # an argument: the ones before it get a harmless value, this one a bad one
                before = [q for q in cmd.params if q.param_type_name == "argument"]
                filler = ["X"] * before.index(p)
                yield f"{name} {p.name}={BAD}", path + filler + [BAD], "Invalid value"


CASES = list(cases())


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("cli-usage-home")


def check(argv: list[str], code: int, text: str, names: str) -> None:
    assert "Traceback" not in text, f"{argv}: {text}"
    assert code == 2, f"{argv} exited {code}: {text}"
    body = text.strip()
    assert body.startswith("error: bifrost"), f"{argv}: {text}"
    assert "\n\n" not in body and len(body.splitlines()) <= 3 and len(body) < 800, f"{argv}: not one paragraph: {text}"
    assert names in body, f"{argv}: the message does not name {names!r}: {text}"
    assert "hint: try bifrost" in body and "--help" in body, f"{argv}: no hint: {text}"


def in_process(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = run(argv)
    return code, out.getvalue()


@pytest.mark.parametrize("argv,names", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_usage_error_in_process(argv, names, home, monkeypatch):
    monkeypatch.setenv("BIFROST_HOME", str(home))
    monkeypatch.setenv("BIFROST_DB_URL", "")
    code, text = in_process(argv)
    check(argv, code, text, names)


def test_every_command_is_covered():
    covered = {c[0].rsplit(" ", 1)[0] for c in CASES}
    assert len(covered) >= 50 and {"backtest", "risk limits", "news ingest file", "signals book"} <= covered


# Mistakes a user made (issue 15), each a Python traceback before: refused by the command with a hint in CLI terms.
FOUND = [(["backtest", "sma_cross", "--param", "fast"], "--param"),
         (["backtest", "sma_cross", "--param", "fast=abc"], "fast takes a whole number"),
         (["backtest", "sma_cross", "--start", "2020-13-45"], "--start"),
         (["backtest", "sma_cross", "--engine", "turbo"], "--engine"),
         (["backtest", "sma_cross", "--bar-size", "7q"], "--bar-size"),
         (["backtest", "nosuch"], "use one of mean_reversion, momentum, sma_cross"),
         (["sweep", "sma_cross", "--grid", "fast=5-50"], "write start:stop:step"),
         (["ingest", "file", "bars.csv", "--symbol", "XYZ", "--basis", "adjusted"], "--basis"),
         (["risk", "limits", "desk", "--set", "max_foo=1"], "no limit 'max_foo'"),
         (["risk", "limits", "desk", "--set", "max_order_notional=lots"], "'lots' is not an amount"),
         (["data", "quarantine", "DRT"], "DRT"),
         (["config", "show", "--bogus"], "--bogus"),
         (["portfolio", "show", "nobody"], "bifrost portfolio open NAME"),
         (["trade", "nobody", "--session", "2013-10-04", "--strategy", "x", "--symbols", "SPY"], "no registered strategy"),
         (["nosuchcmd"], "No such command"),
         (["backtest", "sma_cross", "--symbols", "SP Y"], "letters A-Z, digits 0-9"),  # the symbol grammar (issue 16)
         (["backtest", "sma_cross", "--symbols", "X" * 40], "1 to 21 characters"),
         (["fills", "--account", "nobody"], "no account 'nobody'")]


@pytest.mark.parametrize("argv,names", FOUND, ids=[" ".join(a) for a, _ in FOUND])
def test_a_mistake_the_command_catches(argv, names, home, monkeypatch):
    monkeypatch.setenv("BIFROST_HOME", str(home))
    monkeypatch.setenv("BIFROST_DB_URL", "")
    code, text = in_process(argv)
    check(argv, code, text, names)


# Through the executable: one of each kind, and help (exit 0, no pandas: quick), four processes at a time.
KINDS = [(["risk", "limits", "desk", "--no-such-flag"], 2, "--no-such-flag"),  # an unknown flag, two levels down
         (["portfolio", "open"], 2, "Missing argument"),                      # a missing argument
         (["backtest", "sma_cross", "--start", "2020-13-45"], 2, "--start"),   # a value refused at its flag
         (["portfolio", "show", "nobody"], 2, "no portfolio 'nobody'"),        # a name refused by the command
         (["backtset"], 2, "did you mean 'backtest'"),                         # an unknown command
         ([], 0, "Usage: bifrost"), (["risk"], 0, "Usage: bifrost risk"), (["news", "ingest"], 0, "Usage: bifrost"),
         (["--help"], 0, "Usage: bifrost"), (["backtest", "--help"], 0, "Usage: bifrost backtest")]


def test_the_executable_exits_with_the_status(home):
    env = {**os.environ, "BIFROST_HOME": str(home), "BIFROST_DB_URL": ""}

    def call(case):
        p = subprocess.run([str(EXE), *case[0]], capture_output=True, text=True, env=env, timeout=120)
        return case, p.returncode, p.stdout + p.stderr

    with ThreadPoolExecutor(4) as pool:
        for (argv, status, names), code, text in pool.map(call, KINDS):
            if status == 2:
                check(argv, code, text, names)
            else:
                assert code == 0 and names in text and "Traceback" not in text, (argv, code, text)


def test_an_unknown_command_suggests_the_near_one():
    code, text = in_process(["backtset"])
    check(["backtset"], code, text, "did you mean 'backtest'")


def test_a_bug_is_one_line_not_a_traceback(monkeypatch, home):
    "An exception Bifrost did not expect is reported as a bug in one paragraph, exit 1 (BIFROST_TRACEBACK=1 shows it)."
    import bifrost.commands.trading as trading
    monkeypatch.setenv("BIFROST_HOME", str(home))
    monkeypatch.setattr(trading, "open_store", lambda read_only=False: 1 / 0)
    code, text = in_process(["portfolio", "list"])
    assert code == 1 and "ZeroDivisionError" in text and "BIFROST_TRACEBACK=1" in text and "Traceback" not in text
    monkeypatch.setenv("BIFROST_TRACEBACK", "1")
    with pytest.raises(ZeroDivisionError):
        in_process(["portfolio", "list"])
