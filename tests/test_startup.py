"""Start-up: `bulksync --help` (and every command's --help) imports neither pandas nor aiohttp,
and `bulksync check` neither pandas nor aiohttp nor asyncio (it sends with http.client). Checked
by the modules a fresh interpreter holds afterwards, never by timing (bench/run.py --only startup
measures the time)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bulksync.fake.process import ServerThread
from tests.conftest import ROOT

# Modules the library needs and --help does not: the costly part of `import bulksync.api`.
HEAVY = ("pandas", "numpy", "pyarrow", "aiohttp", "orjson", "tqdm", "email_validator")
# What the credentials check may not need: it reads no rows, and sends its one request with the
# standard library (`import aiohttp` alone takes several times as long as `import click`).
CHECK_HEAVY = ("pandas", "numpy", "pyarrow", "aiohttp", "aiolimiter", "asyncio", "tqdm")

# Runs `main(ARGS)` as `bulksync ARGS` would (no ARGS: only imports the CLI), then prints the
# exit code and the top-level packages of HEAVY that were imported, as one JSON line.
_PROBE = """
import json, sys
heavy = set(json.loads(sys.argv[1]))
args = json.loads(sys.argv[2])
import bulksync.cli
code = None
if args is not None:
    try:
        bulksync.cli.main(args, prog_name="bulksync")
    except SystemExit as exc:
        code = exc.code
loaded = sorted(m for m in sys.modules if m.split(".")[0] in heavy)
print(json.dumps({"code": code, "heavy": loaded}))
"""


def probe(args: list[str] | None, heavy: tuple[str, ...] = HEAVY) -> dict[str, object]:
    """In a fresh interpreter: the exit code of `bulksync ARGS`, and the HEAVY modules it held."""
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(heavy), json.dumps(args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_importing_the_cli_imports_nothing_heavy() -> None:
    assert probe(None)["heavy"] == []


def test_importing_the_package_imports_nothing_heavy() -> None:
    code = "import bulksync, sys; print(sorted(m for m in sys.modules if m.startswith('bulksync')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.stdout.strip() == "['bulksync']", done.stderr


def _commands() -> list[list[str]]:
    from bulksync.cli import main

    commands: list[list[str]] = [[]]
    for name, command in main.commands.items():
        commands.append([name])
        commands += [[name, sub] for sub in getattr(command, "commands", {})]
    return commands


@pytest.mark.parametrize("command", _commands(), ids=lambda c: " ".join(c) or "bulksync")
def test_help_imports_nothing_heavy(command: list[str]) -> None:
    """`bulksync --help`, `bulksync sync --help`... every command's help, in a fresh process."""
    assert probe([*command, "--help"]) == {"code": 0, "heavy": []}


def test_check_imports_neither_pandas_nor_aiohttp(api_env: ServerThread) -> None:
    """`bulksync check` against the simulator: the credentials accepted, and neither pandas nor
    aiohttp (nor asyncio) loaded."""
    assert probe(["check"], heavy=CHECK_HEAVY) == {"code": 0, "heavy": []}
    assert [r.path for r in api_env.snapshot()[0]] == ["/api/v1/accounts/region"]


def test_check_refused_imports_no_aiohttp(api_env: ServerThread) -> None:
    """Refused credentials (exit 3) take the same way: no aiohttp for the error either."""
    api_env.fake.config.api_key = "rotated"
    assert probe(["check"], heavy=CHECK_HEAVY) == {"code": 3, "heavy": []}


def test_library_check_imports_no_aiohttp(api_env: ServerThread) -> None:
    """`bulksync.check()`, the library's credentials check, likewise."""
    code = (
        "import sys, bulksync;"
        f" print(bulksync.check(bulksync.SendOptions(base_url={api_env.url!r}))['region']);"
        f" print(sorted(m for m in sys.modules if m.split('.')[0] in {CHECK_HEAVY!r}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert done.stdout.splitlines() == ["us", "[]"], done.stderr


def test_a_night_with_nothing_to_send_imports_no_aiohttp(
    api_env: ServerThread, tmp_path: Path
) -> None:
    """The second night of an unchanged file: the credentials are checked (with http.client)
    and nothing is sent, so aiohttp is never imported; the first night's rows were sent with
    it, and a row edited on the third night is too."""
    source, state = tmp_path / "in.csv", tmp_path / "s.db"
    night = ["sync", str(source), "--state", str(state), "--rate", "0", "--quiet", "--fresh"]

    def imports_aiohttp() -> bool:
        result = probe(night)
        heavy = result["heavy"]
        assert result["code"] == 0 and isinstance(heavy, list)
        return "aiohttp" in {m.split(".")[0] for m in heavy}

    source.write_text("id,email\n1,a@example.com\n2,b@example.com\n")
    assert imports_aiohttp()
    before = len(api_env.snapshot()[0])
    assert not imports_aiohttp()
    assert [r.path for r in api_env.snapshot()[0][before:]] == ["/api/v1/accounts/region"]
    source.write_text("id,email\n1,a@example.com\n2,c@example.com\n")
    assert imports_aiohttp()
