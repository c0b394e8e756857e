"""Configuration: every shipped config validates; every mistake is reported with the key that caused it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from realtime.config import Config, ConfigError, build, load_config, validate, with_session_overrides
from tests.conftest import ROOT


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_configs_validate(path: Path) -> None:
    validate(load_config(path))


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[session]\nend_of_turnms = 600\n", "[session].end_of_turnms"),
        ("[session]\nend_of_turn_ms = 'soon'\n", "[session].end_of_turn_ms must be an integer"),
        ("[session]\nspeculate_after_ms = 800\nend_of_turn_ms = 700\n", "speculate_after_ms (800) must be below"),
        ("[models]\nstack = 'gpt'\n", "[models].stack must be one of"),
        ("[models.embedded]\nlm = 'llama-70b'\n", "[models.embedded].lm must be one of"),
        ("[ice]\nport_min = 5000\n", "[ice] port_min..port_max"),
        ("[ice]\nservers = [{ url = 'stun:x' }]\n", "[ice.servers[0]].url"),
        ("[server\nport = 1\n", "not valid TOML"),
    ],
)
def test_errors_name_the_bad_key(tmp_path: Path, toml: str, message: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(toml)
    with pytest.raises(ConfigError) as exc:
        validate(load_config(cfg))
    assert message in str(exc.value)
    assert str(cfg) in str(exc.value)


def test_server_refuses_to_start_on_a_bad_config(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[session]\nbarge_in = 5\n")
    result = subprocess.run([sys.executable, "server.py", "--config", str(cfg)], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert "[session].barge_in" in result.stderr


def test_session_overrides_are_validated_and_merged() -> None:
    base = Config().session
    merged = with_session_overrides(base, {"end_of_turn_ms": 900, "speculation": False})
    assert (merged.end_of_turn_ms, merged.speculation, merged.speculate_after_ms) == (900, False, 200)
    with pytest.raises(ConfigError, match=r"\[session\].speed"):
        with_session_overrides(base, {"speed": 3.0})
    with pytest.raises(ConfigError, match="true or false"):
        with_session_overrides(base, {"speculation": "yes"})


def test_per_number_telephony_overrides_are_checked_at_start() -> None:
    raw = {"telephony": {"numbers": [{"number": "+15550100", "session": {"voice_speed": 2}}]}}
    with pytest.raises(ConfigError, match="voice_speed"):
        validate(build(Config, raw, ""))
