#!/usr/bin/env python3
"""Mint a cxrelay viewer token from your own application (Python, PyJWT).

A token is a JWT signed with HS256 and the secret from cxrelay's
``[auth] secret``. It names the cameras it opens (or "*" for all) and when it
expires. Hand it to the page, which passes it to the player
(``<cxrelay-player token="...">``, sent as ``?token=``) or sets the
``cxrelay_token`` cookie. Keep tokens short-lived: a viewer still watching when
its token expires is disconnected (close code 1008), and the player waits for
a new one.

    pip install PyJWT
    CXRELAY_AUTH_SECRET=... python3 mint_token.py lobby door --ttl 3600 --subject kiosk-1

Equivalent to ``cxrelay token --camera lobby --camera door --ttl 1h``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jwt  # PyJWT


def mint(secret: str, cameras: list[str] | str, ttl_seconds: int,
         subject: str | None = None) -> str:
    now = int(time.time())
    claims: dict[str, object] = {
        "cameras": cameras,  # ["lobby", "door"], or "*" for every camera
        "iat": now,
        "exp": now + ttl_seconds,  # required: cxrelay refuses tokens without it
    }
    if subject:
        claims["sub"] = subject  # who: shows up in cxrelay's logs, not checked
    return jwt.encode(claims, secret, algorithm="HS256")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cameras", nargs="+", help='camera names, or "*" for all')
    parser.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")
    parser.add_argument("--subject", help="who the token is for (optional)")
    parser.add_argument("--secret-env", default="CXRELAY_AUTH_SECRET",
                        help="environment variable holding the secret")
    args = parser.parse_args()
    secret = os.environ.get(args.secret_env)
    if not secret:
        print(f"set {args.secret_env} to cxrelay's [auth] secret", file=sys.stderr)
        return 2
    cameras = "*" if args.cameras == ["*"] else args.cameras
    print(mint(secret, cameras, args.ttl, args.subject))
    return 0


if __name__ == "__main__":
    sys.exit(main())
