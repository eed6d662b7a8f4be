"""examples/cxrelay.toml stays in step with cxrelay/config.py: it loads, it
shows every key the dataclasses define, and the values it calls defaults are
the defaults."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from cxrelay.config import (
    AuthConfig,
    CameraConfig,
    Config,
    ConfigError,
    LogConfig,
    ServerConfig,
    load_config,
    parse_config,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cxrelay.toml"
SECTIONS = {"server": ServerConfig, "log": LogConfig, "auth": AuthConfig, "camera": CameraConfig}
# Secrets are written as key, key_env or key_file; the dataclass holds the value.
SECRET_FORMS = {"auth": {"secret", "metrics_token"}, "camera": {"password"}}
SECRETS = {"CXRELAY_YARD_PASSWORD": "yard pa$$word"}
LOBBY_PASSWORD = "lobby-secret"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "lobby").write_text(LOBBY_PASSWORD + "\n")
    return {**SECRETS, "CREDENTIALS_DIRECTORY": str(tmp_path)}


@pytest.fixture
def config(env: dict[str, str]) -> Config:
    return load_config(EXAMPLE, env)


def shown_keys(text: str) -> dict[str, set[str]]:
    """Keys per section, set or commented out (``# key = value``)."""
    keys: dict[str, set[str]] = {}
    section = ""
    for line in text.splitlines():
        if m := re.match(r"^\[\[?(\w+)\]\]?\s*$", line):
            section = m.group(1)
            continue
        if m := re.match(r"^#?\s*([a-z_]+)\s*=\s*\S", line):
            keys.setdefault(section, set()).add(m.group(1))
    return keys


def commented_assignments(text: str) -> list[str]:
    return [line[1:].strip() for line in text.splitlines()
            if re.match(r"^#\s*[a-z_]+\s*=\s*\S", line)]


def test_example_loads(config: Config) -> None:
    assert [c.name for c in config.cameras] == ["lobby", "yard", "gate"]


def test_every_dataclass_field_is_shown() -> None:
    keys = shown_keys(EXAMPLE.read_text())
    for section, cls in SECTIONS.items():
        fields = {f.name for f in dataclasses.fields(cls)}
        missing = fields - keys.get(section, set())
        assert not missing, f"examples/cxrelay.toml [{section}] lacks {sorted(missing)}"


def test_every_secret_form_is_shown() -> None:
    keys = shown_keys(EXAMPLE.read_text())
    for section, names in SECRET_FORMS.items():
        for name in names:
            for form in (name, f"{name}_env", f"{name}_file"):
                assert form in keys[section], f"[{section}] lacks {form}"


def test_no_key_unknown_to_the_loader() -> None:
    """Every key shown, set or commented out, is one the loader accepts in
    that section (a documented key the loader rejects would be a trap)."""
    text = EXAMPLE.read_text()
    keys = shown_keys(text)
    for section, names in keys.items():
        if section not in SECTIONS:
            continue
        known = {f.name for f in dataclasses.fields(SECTIONS[section])}
        for secret in SECRET_FORMS.get(section, ()):
            known |= {secret, f"{secret}_env", f"{secret}_file"}
        assert names <= known, f"[{section}] shows unknown keys {sorted(names - known)}"


def test_commented_values_are_valid(tmp_path: Path) -> None:
    for assignment in commented_assignments(EXAMPLE.read_text()):
        tomllib.loads(assignment)  # raises on a typo in the documentation
    # TLS goes as a pair; uncommented together they must pass validation.
    tls = dict(tomllib.loads("\n".join(a for a in commented_assignments(EXAMPLE.read_text())
                                       if a.startswith("tls_"))))
    assert set(tls) == {"tls_cert", "tls_key"}
    assert parse_config({"server": tls}, env={}).server.tls_cert == tls["tls_cert"]


def test_server_and_log_values_are_the_defaults(config: Config) -> None:
    assert config.server == ServerConfig()
    assert config.log == LogConfig()
    assert config.auth == AuthConfig()


def test_first_camera_spells_out_the_defaults(config: Config) -> None:
    lobby = config.cameras[0]
    assert lobby == CameraConfig(name=lobby.name, url=lobby.url)
    raw = tomllib.loads(EXAMPLE.read_text())["camera"][0]
    # TOML has no None: an unset key is shown commented out (every field is shown).
    defaults = {f.name for f in dataclasses.fields(CameraConfig)
                if f.default is not None} - {"name", "url"}
    assert defaults <= set(raw), sorted(defaults - set(raw))


def test_passwords_come_from_env_and_credentials(config: Config) -> None:
    lobby, yard, gate = config.cameras
    assert LOBBY_PASSWORD in lobby.url
    assert "pa%24%24word" in yard.url
    assert "@" not in gate.url
    assert yard.substream == "rtsp://viewer:yard%20pa%24%24word@192.168.1.65/stream2"
    # ... and never show in what gets logged.
    assert LOBBY_PASSWORD not in repr(lobby) and LOBBY_PASSWORD not in lobby.safe_url


def test_operations_guide_lists_every_metric() -> None:
    """docs/operations.md documents each metric the relay exports, by its
    exposed name (counters gain _total)."""
    from cxrelay.metrics import Metrics

    guide = (EXAMPLE.parents[1] / "docs" / "operations.md").read_text()
    families = {metric.name + ("_total" if metric.type == "counter" else "")
                for metric in Metrics().registry.collect()}
    assert families, "no metrics collected"
    missing = sorted(name for name in families if f"`{name}`" not in guide)
    assert not missing, f"docs/operations.md lacks {missing}"


def test_documented_secret_length_is_the_one_checked() -> None:
    """The example and docs/security.md state the shortest token secret the config takes."""
    security = (EXAMPLE.parents[1] / "docs" / "security.md").read_text()
    (stated,) = {int(n) for n in re.findall(r"At least (\d+) characters", EXAMPLE.read_text())}
    assert f"shorter than {stated} characters" in " ".join(security.split())
    assert parse_config({"auth": {"secret": "s" * stated}}, env={}).auth.secret
    with pytest.raises(ConfigError, match="too short"):
        parse_config({"auth": {"secret": "s" * (stated - 1)}}, env={})


def test_operations_guide_quotes_log_lines_the_code_writes() -> None:
    """Every log event docs/operations.md names in its Logs section, and every
    message its reload section quotes, is one the code writes (a guide that
    quotes a line nobody prints sends an operator grepping for nothing)."""
    guide = (EXAMPLE.parents[1] / "docs" / "operations.md").read_text()
    code = "\n".join(p.read_text() for p in (EXAMPLE.parents[1] / "cxrelay").rglob("*.py"))
    logs = " ".join(guide[guide.index("The ones worth knowing:"):
                          guide.index("Set `--log-level")].split())
    events = {e for e in re.findall(r"`([a-z][^`]*)`", logs) if "_" not in e}  # not fields
    reload = guide[guide.index("## Reloading"):guide.index("## On-demand cameras")]
    quoted = {q for q in re.findall(r"`([a-z][a-z ,:]+[a-z])`", " ".join(reload.split()))
              if " " in q and not q.startswith(("systemctl", "kill", "cxrelay", "allow_"))}
    assert len(events) > 15 and len(quoted) > 4, (events, quoted)
    missing = sorted(e for e in events if f'"{e}"' not in code)
    assert not missing, f"events named in docs/operations.md that no code logs: {missing}"
    missing = sorted(q for q in quoted if q not in code)
    assert not missing, f"messages quoted in docs/operations.md that no code writes: {missing}"
