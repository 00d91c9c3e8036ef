"""The ``workbench`` command: serve the dashboard, pre-train the default model.

``workbench serve`` listens on 127.0.0.1 only. Listening on any other address needs ``--expose``
and a password (``--basic-auth`` or ``$WORKBENCH_PASSWORD``): the dashboard runs Python code on
your machine on behalf of whoever can reach it.

Examples
--------
>>> main(["--help"])  # doctest: +SKIP
usage: workbench [-h] {serve,train-default} ...
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
import socket
import sys

PASSWORD_ENV = "WORKBENCH_PASSWORD"
COOKIE_SECRET_ENV = "WORKBENCH_COOKIE_SECRET"
MIN_PASSWORD = 8


def is_loopback(address: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'."""
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="workbench",
        description="Prune and quantize neural networks interactively.")
    sub = parser.add_subparsers(dest="command", metavar="{serve,train-default}")

    serve = sub.add_parser("serve", help="serve the dashboard in the browser",
                           description="Serve the workbench dashboard (default: localhost only).")
    serve.add_argument("--port", type=int, default=5006, help="port (default: 5006)")
    serve.add_argument("--address", default="127.0.0.1",
                       help="address to listen on (default: 127.0.0.1; others need --expose)")
    serve.add_argument("--show", action=argparse.BooleanOptionalAction, default=False,
                       help="open a browser tab (default: no)")
    serve.add_argument("--expose", action="store_true",
                       help="allow listening on a non-loopback address (requires a password)")
    serve.add_argument("--basic-auth", metavar="PASSWORD", default=None,
                       help=f"password for the login page (or set ${PASSWORD_ENV})")
    serve.add_argument("--allow-websocket-origin", action="append", default=[], metavar="HOST[:PORT]",
                       help="extra host allowed to open the websocket (repeatable)")
    serve.set_defaults(func=serve_command)

    train = sub.add_parser("train-default", help="train and cache the default model now",
                           description="Train the default LeNet-5 on digits into the cache.")
    train.add_argument("--seed", type=int, default=0)
    train.set_defaults(func=train_command)
    return parser


def _origins(address: str, port: int, extra: list[str]) -> list[str]:
    hosts = ["localhost", "127.0.0.1"]
    if address in ("0.0.0.0", "::", ""):
        hosts += [socket.gethostname(), socket.getfqdn()]
    elif not is_loopback(address):
        hosts.append(address)
    origins = [f"{h}:{port}" for h in dict.fromkeys(hosts)]
    return origins + [o for o in extra if o not in origins]


def serve_command(args) -> int:
    password = args.basic_auth or os.environ.get(PASSWORD_ENV)
    if not is_loopback(args.address):
        if not args.expose or not password:
            print(f"workbench: refusing to listen on {args.address}: anyone who can reach it could "
                  "run code on this machine. Pass --expose together with --basic-auth PASSWORD "
                  f"(or set ${PASSWORD_ENV}), or keep the default --address 127.0.0.1.",
                  file=sys.stderr)
            return 2
        if len(password) < MIN_PASSWORD:
            print(f"workbench: the password must have at least {MIN_PASSWORD} characters",
                  file=sys.stderr)
            return 2
    if not 0 < args.port < 65536:
        print(f"workbench: --port must be in 1..65535, got {args.port}", file=sys.stderr)
        return 2

    import panel as pn

    from workbench.app import APP_NAME, create_app

    auth = {}
    if password:
        auth = {"basic_auth": password,
                "cookie_secret": os.environ.get(COOKIE_SECRET_ENV) or secrets.token_urlsafe(32)}
    host = "localhost" if is_loopback(args.address) else (
        socket.gethostname() if args.address in ("0.0.0.0", "::") else args.address)
    print(f"workbench dashboard: http://{host}:{args.port}/{APP_NAME}", flush=True)
    try:
        pn.serve({APP_NAME: create_app}, port=args.port, address=args.address, show=args.show,
                 websocket_origin=_origins(args.address, args.port, args.allow_websocket_origin),
                 title="workbench", verbose=False, **auth)
    except KeyboardInterrupt:
        pass
    except OSError as err:
        print(f"workbench: cannot listen on {args.address}:{args.port}: {err}", file=sys.stderr)
        return 1
    return 0


def train_command(args) -> int:
    from workbench.cache import cache_dir
    from workbench.session import Session

    session = Session.default(seed=args.seed, progress=True)
    print(f"default model ready (test accuracy {100 * session.base.metrics.accuracy:.1f}%), "
          f"cached in {cache_dir('models')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``workbench`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
