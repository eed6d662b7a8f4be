import os
import textwrap
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from cxrelay import config as config_module
from cxrelay.config import (
    DEMO_URL,
    AuthConfig,
    CameraConfig,
    Config,
    ConfigError,
    LogConfig,
    ServerConfig,
    listener_keys,
    load_config,
    parse_camera_option,
    parse_config,
    parse_substream_option,
    plan_reload,
    require_cameras,
    with_overrides,
)

GOOD = """
[server]
host = "0.0.0.0"
port = 8443
allowed_origins = ["https://shop.example.com", "https://*.example.com"]

[[camera]]
name = "lobby"
url = "rtsp://viewer@10.0.0.5:554/stream1"
password_env = "LOBBY_PW"
transport = "udp"

[[camera]]
name = "till-1"
url = "/var/lib/cxrelay/till.mp4"
on_demand = true
linger = 5
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cxrelay.toml"
    path.write_text(textwrap.dedent(text))
    return path


def test_good_config(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD), env={"LOBBY_PW": "pa:ss/w@rd"})
    assert config.server.port == 8443
    lobby, till = config.cameras
    assert lobby.url == "rtsp://viewer:pa%3Ass%2Fw%40rd@10.0.0.5:554/stream1"
    assert lobby.transport == "udp"
    assert "pa" not in repr(lobby) and "***" in repr(lobby)
    assert till.on_demand and till.linger == 5.0 and till.transport == "tcp"


def test_password_from_credentials_directory(tmp_path: Path) -> None:
    (tmp_path / "lobby.pw").write_text("from-file\n")
    path = write(tmp_path, """
        [[camera]]
        name = "lobby"
        url = "rtsp://admin@cam/x"
        password_file = "lobby.pw"
    """)
    config = load_config(path, env={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert config.cameras[0].url == "rtsp://admin:from-file@cam/x"


BAD = [
    ("[server]\nprot = 1\n", "server.prot: unknown key"),
    ("[server]\nport = 70000\n", "server.port: 70000 is out of range"),
    ("[server]\nport = true\n", "server.port: expected an integer, got a boolean"),
    ("[server]\nport = '80'\n", "server.port: expected an integer, got a string"),
    ("[[camera]]\nurl = 'rtsp://a/b'\n", "camera[0].name: missing"),
    ("[[camera]]\nname = 'a b'\nurl = 'rtsp://a/b'\n", "camera[0].name: invalid camera name"),
    ("[[camera]]\nname = 'a'\n", "camera[0] (a).url: missing"),
    ("[[camera]]\nname = 'a'\nurl = 'http://a/b'\n", "unsupported scheme 'http'"),
    ("[[camera]]\nname = 'a'\nurl = 'rtsp://u:pw@h:99999/x'\n", "camera[0] (a).url: malformed"),
    ("[[camera]]\nname = 'a'\nurl = 'rtsp:///x'\n", "no host"),
    ("[[camera]]\nname = 'a'\nurl = 'rtsp://h/x'\ntransport = 'sctp'\n",
     "camera[0] (a).transport: 'sctp' is not one of tcp, udp"),
    ("[[camera]]\nname = 'a'\nurl = 'rtsp://h/x'\nlingr = 3\n", "camera[0] (a).lingr: unknown key"),
    ("[[camera]]\nname = 'a'\nurl = 'rtsp://h/x'\n[[camera]]\nname = 'a'\nurl = 'rtsp://h/y'\n",
     "camera 'a': duplicate camera name"),
    ("[[camera]]\nname = 'a'\nurl = 'rtsp://h/x'\npassword_env = 'NOPE'\n",
     "camera[0] (a).password_env: environment variable NOPE is not set"),
    ("[[camera]]\nname = 'a'\nurl = 'rtsp://h/x'\npassword = 'x'\npassword_env = 'Y'\n",
     "give only one of password, password_env"),
    ("[[camera]]\nname = 'a'\nurl = 'rtsp://h/x'\npassword_file = '/nonexistent/pw'\n",
     "password_file: cannot read /nonexistent/pw"),
    ("[cameras]\n", "cameras: unknown key (did you mean [[camera]]?)"),
    ("[[camera]]\nname = 'a'\nurl = 'rtsp://h/x'\nsubstream = 'http://h/y'\n",
     "camera[0] (a).substream: unsupported scheme 'http'"),
    ("[[camera]]\nname = 'a'\nurl = 'rtsp://h/x'\nsubstream = 3\n",
     "camera[0] (a).substream: expected a string, got an integer"),
    ("[server]\nallowed_origins = ['https://a.com/']\n", "allowed_origins[0]"),
    ("[server]\ntls_cert = '/a.pem'\n", "server.tls_key: tls_cert and tls_key go together"),
    ("[auth]\nsecret = 'short'\n", "auth.secret: too short"),
    ("[log]\nlevel = 'loud'\n", "log.level: 'loud' is not one of"),
    ("[server\n", "invalid TOML"),
    ("camera = 3\n", "camera: expected a list, got an integer"),
    # Half-written files (issue 14 fault 4): each one clear line.
    ("", "the file is empty (written halfway, or truncated?)"),
    ("\n  \n", "the file is empty"),
    ("[[camera]]\nname = 'a'\nurl = 'rtsp://h/x'\n[[camera]]\nname = 'b", "invalid TOML"),
    ("[[camera]]\nname = 'a'\nurl = 'rtsp://h/x'\n[[cam", "invalid TOML"),
    ("[[camera]]\nname = 'a'\nurl = 'rtsp://h/x'\npassword = ''\n",
     "camera[0] (a).password: is empty"),
    ("[[camera]]\nname = 'a'\nurl = 'rtsp://h/x'\npassword_env = 'EMPTY'\n",
     "camera[0] (a).password_env: environment variable EMPTY is empty"),
    ("[server]\nallowed_hosts = ['https://cams.example.com']\n", "allowed_hosts[0]"),
    ("[server]\nallowed_hosts = [3]\n", "allowed_hosts[0]: expected a string"),
    ("[server]\nmax_handshakes = -1\n", "server.max_handshakes: -1 is out of range"),
    ("[server]\nallow_no_cameras = 1\n", "server.allow_no_cameras: expected true or false"),
    ("[auth]\nmax_token_ttl = 10\n", "auth.max_token_ttl: 10 is out of range"),
    ("[auth]\nmetrics_token = 'short'\n", "auth.metrics_token: too short"),
]


@pytest.mark.parametrize(("text", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_config_names_file_key_and_problem(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={"EMPTY": ""})
    text_of_error = str(info.value)
    assert text_of_error.startswith(f"{path}: ")
    assert message in text_of_error
    assert "\n" not in text_of_error


def test_errors_never_show_the_password(tmp_path: Path) -> None:
    path = write(tmp_path, "[[camera]]\nname = 'a'\nurl = 'rtsp://u:topsecret@h:99999/x'\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert "topsecret" not in str(info.value)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: no such file"):
        load_config("nope.toml")


def test_camera_option_and_overrides() -> None:
    cam = parse_camera_option("lobby=rtsp://u:p@h/x")
    assert (cam.name, cam.url) == ("lobby", "rtsp://u:p@h/x")
    with pytest.raises(ConfigError, match="expected NAME=URL"):
        parse_camera_option("rtsp://h/x")
    with pytest.raises(ConfigError) as info:
        parse_camera_option("bad name=rtsp://u:secretpw@h/x")
    assert "secretpw" not in str(info.value)
    config = with_overrides(Config(), cameras=(cam,), demo=True, port=9000, log_level="debug")
    assert [c.name for c in config.cameras] == ["lobby", "demo"]
    assert config.cameras[1].url == DEMO_URL
    assert config.server.port == 9000 and config.server.host == "127.0.0.1"
    assert config.log.level == "debug" and config.log.format == "auto"
    with pytest.raises(ConfigError, match="duplicate"):
        with_overrides(config, demo=True)


def test_secrets_are_camera_credentials_and_the_token_secret() -> None:
    config = parse_config({"camera": [{"name": "a", "url": "rtsp://bob:hunter22@h/x"},
                                      {"name": "b", "url": "rtsp://h/y"}],
                           "auth": {"secret": "s" * 32}}, env={})
    assert set(config.secrets()) == {"bob", "hunter22", "s" * 32}
    assert Config().secrets() == ()


def test_listener_keys_are_marked_on_the_dataclass() -> None:
    assert set(listener_keys()) == {"host", "port", "tls_cert", "tls_key", "handshake_timeout",
                                    "max_message_size", "ping_interval", "ping_timeout"}
    operations = (Path(__file__).parents[2] / "docs" / "operations.md").read_text()
    reload_section = operations[operations.index("listener can't change"):]
    assert "listener settings changed: restart cxrelay" in " ".join(reload_section.split())
    assert all(f"`{key}`" in reload_section[:800] for key in listener_keys())


def test_reload_plan() -> None:
    keep, change, gone = (CameraConfig(n, f"rtsp://h/{n}") for n in ("keep", "change", "gone"))
    old = Config(server=ServerConfig(port=8080, max_viewers=10), cameras=(keep, change, gone),
                 log=LogConfig(level="debug"))
    changed = replace(change, read_timeout=5.0)
    new = Config(server=ServerConfig(port=9090, ping_timeout=5.0, max_viewers=20,
                                     allowed_origins=("https://a.example",)),
                 cameras=(CameraConfig("new", "rtsp://h/new"), changed, keep),
                 auth=AuthConfig(secret="s" * 32), log=LogConfig(level="error"), path="x.toml")
    plan = plan_reload(old, new)
    assert [c.name for c in plan.add] == ["new"]
    assert plan.remove == ("gone",)
    assert plan.restart == (changed,) and plan.restart[0].read_timeout == 5.0
    assert plan.unchanged == ("keep",)
    assert plan.listener_changed == ("port", "ping_timeout")
    # The rest applies at once; the listener and logging stay as they run.
    assert plan.config.server == replace(new.server, port=8080, ping_timeout=20.0)
    assert plan.config.cameras == new.cameras and plan.config.auth == new.auth
    assert plan.config.log == old.log and plan.config.path == "x.toml"
    same = plan_reload(old, old)
    assert (same.add, same.remove, same.restart, same.listener_changed) == ((), (), (), ())
    assert same.unchanged == ("keep", "change", "gone") and same.config == old


def test_substream_gets_the_cameras_password_and_its_secrets_are_kept() -> None:
    config = parse_config({"camera": [
        {"name": "a", "url": "rtsp://bob@h/main", "substream": "rtsp://h/sub",
         "password_env": "PW"},
        {"name": "b", "url": "rtsp://h/y", "substream": "rtsp://carol:s3cr3t-sub@h/sub"},
        {"name": "c", "url": "rtsp://h/z"},
    ]}, env={"PW": "hunter22"})
    a, b, c = config.cameras
    assert a.substream == "rtsp://bob:hunter22@h/sub"  # the main URL's user name
    assert a.streams == ("main", "sub") and c.streams == ("main",)
    assert "s3cr3t-sub" in config.secrets() and "carol" in config.secrets()
    assert "s3cr3t-sub" not in repr(b) and "hunter22" not in repr(a) and "substream" in repr(b)
    # Each stream's own settings: the sub-stream is on demand whatever the camera says.
    sub = b.stream("sub")
    assert (sub.url, sub.on_demand, sub.substream) == (b.substream, True, None)
    assert b.stream("main") == replace(b, substream=None)
    assert c.stream("sub") == c  # no sub-stream: the main stream serves


def test_substream_option() -> None:
    cam = parse_camera_option("lobby=rtsp://h/main")
    config = with_overrides(Config(), cameras=(cam,),
                            substreams=(parse_substream_option("lobby=rtsp://u:pw9@h/sub"),))
    assert config.cameras[0].substream == "rtsp://u:pw9@h/sub"
    with pytest.raises(ConfigError, match="--substream gate: no camera named 'gate'"):
        with_overrides(config, substreams=(("gate", "rtsp://h/x"),))
    with pytest.raises(ConfigError, match="expected NAME=URL"):
        parse_substream_option("rtsp://h/x")
    with pytest.raises(ConfigError) as info:
        parse_substream_option("lobby=ftp://u:pw9@h/x")
    assert "pw9" not in str(info.value)


# --- half-written files and configs without cameras (issue 14 fault 4) -----------------------


def test_an_empty_secret_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "lobby.pw").write_text("\n")  # a credential written halfway
    (tmp_path / "auth").write_text("")
    path = write(tmp_path, """
        [[camera]]
        name = "lobby"
        url = "rtsp://admin@cam/x"
        password_file = "lobby.pw"
    """)
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    with pytest.raises(ConfigError,
                       match=r"camera\[0\] \(lobby\).password_file: .*lobby.pw is empty"):
        load_config(path, env=env)
    path.write_text('[auth]\nsecret_file = "auth"\n')
    with pytest.raises(ConfigError, match=r"auth.secret_file: .*auth is empty"):
        load_config(path, env=env)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "cxrelay.toml"
    path.write_bytes(b"[[camera]]\nname = 'caf\xe9'\n")
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte 22\)"):
        load_config(path)


def test_a_directory_is_not_a_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)


def test_a_file_changing_while_read_is_refused(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Rewritten in place while read (its size differs after the read):
    read again, and refused if it never settles."""
    path = write(tmp_path, GOOD)
    real_stat = os.stat
    growing = iter(range(1, 1000))

    def stat_while_written(p: Any, *args: Any, **kwargs: Any) -> Any:
        result = real_stat(p, *args, **kwargs)
        if str(p) == str(path):
            fields = list(result)
            fields[6] += next(growing)  # st_size: someone is still appending
            return os.stat_result(fields)
        return result

    monkeypatch.setattr(config_module.os, "stat", stat_while_written)
    monkeypatch.setattr(config_module, "READ_RETRY_DELAY", 0)
    with pytest.raises(ConfigError, match="changed while it was being read"):
        load_config(path, env={"LOBBY_PW": "x"})
    # Once it settles (here: at the second look), it loads.
    settles = iter([True])

    def stat_settling(p: Any, *args: Any, **kwargs: Any) -> Any:
        result = real_stat(p, *args, **kwargs)
        if str(p) == str(path) and next(settles, False):
            fields = list(result)
            fields[6] += 1
            return os.stat_result(fields)
        return result

    monkeypatch.setattr(config_module.os, "stat", stat_settling)
    assert len(load_config(path, env={"LOBBY_PW": "x"}).cameras) == 2


def test_no_cameras_is_an_error_unless_allowed(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 8081\n")
    config = load_config(path)  # a valid file ...
    with pytest.raises(ConfigError) as info:
        require_cameras(config)  # ... but no cameras
    assert str(info.value) == (f"{path}: no cameras: add a [[camera]] table, or set "
                               "[server] allow_no_cameras = true to run without any")
    path.write_text("[server]\nallow_no_cameras = true\n")
    assert require_cameras(load_config(path)).cameras == ()


def test_new_keys_parse() -> None:
    config = parse_config({"server": {"allowed_hosts": ["cams.example.com", "*.example.net"],
                                       "max_handshakes": 10, "max_handshakes_per_client": 0,
                                       "allow_no_cameras": True},
                           "auth": {"max_token_ttl": 3600, "metrics_token": "m" * 16}}, env={})
    assert config.server.allowed_hosts == ("cams.example.com", "*.example.net")
    assert (config.server.max_handshakes, config.server.max_handshakes_per_client) == (10, 0)
    assert config.auth.max_token_ttl == 3600.0
    assert "m" * 16 in config.secrets() and "m" * 16 not in repr(config.auth)
