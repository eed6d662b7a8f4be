"""The command line: a thin click layer over ``Config`` and ``Relay``.

Exit codes: 0 clean stop, 2 usage or configuration error (one line, no
traceback), 1 anything else.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click

from cxrelay import __version__
from cxrelay.config import (
    LOG_FORMATS,
    LOG_LEVELS,
    TRANSPORTS,
    Config,
    ConfigError,
    load_config,
    parse_camera_option,
    parse_substream_option,
    require_cameras,
    with_overrides,
)

EXIT_ERROR = 1
EXIT_USAGE = 2


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    click.echo(f"cxrelay: error: {message}", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="cxrelay")
def main() -> None:
    """cxrelay: live H.264 from RTSP cameras to web browsers, with as little delay as possible."""


def build_config(
    config_path: str | None, cameras: tuple[str, ...], substreams: tuple[str, ...] = (),
    **overrides: Any
) -> Config:
    base = load_config(config_path) if config_path else Config()
    extra = tuple(parse_camera_option(c) for c in cameras)
    subs = tuple(parse_substream_option(s) for s in substreams)
    config = with_overrides(base, cameras=extra, substreams=subs, **overrides)
    # Without a file, no camera is a first run (the relay says how to add one);
    # a file without any is more likely one cut short.
    return require_cameras(config) if config_path else config


@main.command()
@click.option("--config", "config_path", metavar="PATH", envvar="CXRELAY_CONFIG",
              help="TOML configuration file.  [env: CXRELAY_CONFIG]")
@click.option("--camera", "cameras", multiple=True, metavar="NAME=URL", envvar="CXRELAY_CAMERA",
              help="Add a camera (repeatable): rtsp://, rtsps://, file:// or a file path. "
                   "[env: CXRELAY_CAMERA, space-separated]")
@click.option("--substream", "substreams", multiple=True, metavar="NAME=URL",
              envvar="CXRELAY_SUBSTREAM",
              help="Give camera NAME (from --camera or the config file) a sub-stream, its "
                   "smaller second stream, for wall tiles (repeatable).  "
                   "[env: CXRELAY_SUBSTREAM, space-separated]")
@click.option("--host", envvar="CXRELAY_HOST",
              help="Address to listen on.  [default: 127.0.0.1; env: CXRELAY_HOST]")
@click.option("--port", type=click.IntRange(0, 65535), envvar="CXRELAY_PORT",
              help="Port to listen on.  [default: 8080; env: CXRELAY_PORT]")
@click.option("--allowed-origin", "allowed_origins", multiple=True, metavar="ORIGIN",
              envvar="CXRELAY_ALLOWED_ORIGIN",
              help="Let pages from this origin watch (repeatable), e.g. https://shop.example.com "
                   "or https://*.example.com.  [env: CXRELAY_ALLOWED_ORIGIN, space-separated]")
@click.option("--demo", is_flag=True, default=False, envvar="CXRELAY_DEMO",
              help="Add the built-in synthetic camera 'demo'.  [env: CXRELAY_DEMO]")
@click.option("--log-format", type=click.Choice(LOG_FORMATS, case_sensitive=False),
              envvar="CXRELAY_LOG_FORMAT",
              help="auto: console on a terminal, JSON otherwise.  [env: CXRELAY_LOG_FORMAT]")
@click.option("--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False),
              envvar="CXRELAY_LOG_LEVEL", help="[default: info; env: CXRELAY_LOG_LEVEL]")
def serve(config_path: str | None, cameras: tuple[str, ...], substreams: tuple[str, ...],
          host: str | None,
          port: int | None, allowed_origins: tuple[str, ...], demo: bool,
          log_format: str | None, log_level: str | None) -> None:
    """Run the relay."""
    overrides = {"demo": demo, "host": host, "port": port, "allowed_origins": allowed_origins,
                 "log_format": log_format and log_format.lower(),
                 "log_level": log_level and log_level.lower()}

    def reload_config() -> Config:
        return build_config(config_path, cameras, substreams, **overrides)

    try:
        config = reload_config()
    except ConfigError as exc:
        fail(str(exc))
    run(config, reload_config if config_path else None)


def run(config: Config, reload_config: Callable[[], Config] | None) -> None:
    import uvloop

    from cxrelay.app import run_relay
    from cxrelay.logs import configure_logging

    configure_logging(config.log.format, config.log.level, config.secrets())
    raise_descriptor_limit()
    try:
        uvloop.run(run_relay(config, reload_config))
    except ConfigError as exc:  # found only when starting, e.g. unreadable TLS files
        fail(str(exc))
    except OSError as exc:  # typically the port is taken or the address is not ours
        fail(f"cannot listen on {config.server.host}:{config.server.port}: "
             f"{exc.strerror or exc}", EXIT_ERROR)
    except KeyboardInterrupt:
        pass


def raise_descriptor_limit() -> None:
    """The soft limit on open files up to the hard one, as Go programs do:
    every viewer holds a descriptor, and a shell starts programs with 1024.
    systemd's LimitNOFILE= sets both (systemd/cxrelay.service)."""
    import contextlib
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        # A sandbox may forbid it; the relay then lives within the soft limit.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


@main.command("check-config")
@click.argument("path")
def check_config(path: str) -> None:
    """Validate a configuration file and exit (0: valid, 2: not)."""
    try:
        config = require_cameras(load_config(path))
    except ConfigError as exc:
        fail(str(exc))
    click.echo(f"{path}: OK, {len(config.cameras)} camera(s): "
               + (", ".join(c.name for c in config.cameras) or "none (allow_no_cameras)"))


@main.command()
@click.option("--camera", "cameras", multiple=True, required=True, metavar="NAME",
              help='A camera the token may watch (repeatable), or "*" for all.')
@click.option("--ttl", default="1h", show_default=True,
              help="Lifetime: seconds, or with a unit: 90s, 15m, 1h, 7d.")
@click.option("--subject", help="Who the token is for (the `sub` claim, shown in logs).")
@click.option("--config", "config_path", metavar="PATH", envvar="CXRELAY_CONFIG",
              help="Take the secret from this file's [auth] section.  [env: CXRELAY_CONFIG]")
@click.option("--secret-env", default="CXRELAY_AUTH_SECRET", show_default=True, metavar="VAR",
              help="Otherwise, take the secret from this environment variable.")
def token(cameras: tuple[str, ...], ttl: str, subject: str | None, config_path: str | None,
          secret_env: str) -> None:
    """Mint a viewer token (HS256 JWT) for the given cameras."""
    import os

    from cxrelay.access import format_duration, mint_token, parse_duration, secret_problem
    from cxrelay.config import AuthConfig

    try:
        lifetime = parse_duration(ttl)
    except ValueError as exc:
        fail(f"--ttl: {exc}")
    if config_path:
        try:
            auth = load_config(config_path).auth
        except ConfigError as exc:
            fail(str(exc))
        secret = auth.secret
        if not secret:
            fail(f"{config_path}: [auth] has no secret")
        if lifetime > auth.max_token_ttl:  # the relay would refuse it
            fail(f"--ttl {ttl}: longer than {config_path}'s [auth] max_token_ttl "
                 f"({format_duration(auth.max_token_ttl)})")
    else:
        secret = os.environ.get(secret_env)
        if not secret:
            fail(f"no secret: give --config PATH or set {secret_env}")
        if problem := secret_problem(secret):  # what the config check says of it
            fail(f"{secret_env}: {problem}")
        if lifetime > (default := AuthConfig().max_token_ttl):
            click.echo(f"cxrelay: warning: --ttl {ttl} is longer than the default [auth] "
                       f"max_token_ttl ({format_duration(default)}): a relay with the "
                       "default refuses this token", err=True)
    claim: str | tuple[str, ...] = "*" if "*" in cameras else cameras
    try:
        click.echo(mint_token(secret, claim, lifetime, subject))
    except ValueError as exc:
        fail(str(exc))


@main.command()
@click.argument("url")
@click.option("--seconds", type=click.FloatRange(0.5, 300), default=5.0, show_default=True,
              help="How long to watch the stream.")
@click.option("--transport", type=click.Choice(TRANSPORTS), default="tcp", show_default=True)
@click.option("--timeout", type=click.FloatRange(0.5, 300), default=10.0, show_default=True,
              help="Seconds to wait for the camera to connect or to send.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def probe(url: str, seconds: float, transport: str, timeout: float, as_json: bool) -> None:
    """Connect to a camera and report what an installer needs to know."""
    import json

    from cxrelay.probe import format_report
    from cxrelay.probe import probe as run_probe

    report = run_probe(url, seconds=seconds, transport=transport, timeout=timeout)
    click.echo(json.dumps(report.to_json(), indent=2) if as_json else format_report(report))
    sys.exit(0 if report.ok else EXIT_ERROR)
