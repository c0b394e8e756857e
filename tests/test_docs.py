"""The docs describe the code as it is: README's opening commands, config keys, events; CI runs the README."""

from __future__ import annotations

import dataclasses
import re

from realtime import config as cfg
from realtime.events import CLIENT_EVENTS, SERVER_EVENTS
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def opening_commands() -> list[str]:
    block = re.search(r"```sh\n(.*?)```", README, re.S)
    assert block is not None and README.index(block.group(0)) < README.index("## "), "README must open with them"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_readme_opens_with_exactly_two_commands_and_ci_runs_the_second() -> None:
    serve, test = opening_commands()
    assert serve.startswith("./parley.sh serve") and test == "./parley.sh test"
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci == [f"exec {test}"]


def test_every_config_key_is_documented() -> None:
    tables = [cfg.ServerConfig, cfg.IceConfig, cfg.WebRTCConfig, cfg.SessionConfig, cfg.EmbeddedStackConfig,
              cfg.EchoStackConfig]
    missing = [f"{t.__name__}.{f.name}" for t in tables for f in dataclasses.fields(t) if f"`{f.name}`" not in README]
    assert not missing, f"undocumented config keys: {missing}"


def test_every_event_is_documented() -> None:
    missing = [e for e in (*SERVER_EVENTS, *CLIENT_EVENTS) if f"`{e}`" not in README]
    assert not missing, f"undocumented events: {missing}"
