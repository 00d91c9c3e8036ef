"""The ``workbench`` command: serve the dashboard, pre-train the default model.

``workbench serve`` listens on 127.0.0.1 only. Listening on any other address needs ``--expose``
and a password (``--basic-auth`` or ``$WORKBENCH_PASSWORD``): the dashboard runs Python code on
your machine on behalf of whoever can reach it.

Examples
--------
>>> main(["--help"])  # doctest: +SKIP
usage: workbench [-h] {serve,train-default,bench} ...
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
    sub = parser.add_subparsers(dest="command", metavar="{serve,train-default,bench}")

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

    bench = sub.add_parser(
        "bench", help="time variants of the default model on the inference engines",
        description="Benchmark variants (base, magnitude 90%%, uniform 8-bit and 4-bit, or the "
                    "recipes of --recipes) of the default model on the inference engines.")
    bench.add_argument("--recipes", metavar="FILE", default=None,
                       help="YAML/JSON recipes to build the variants from (base is always timed)")
    bench.add_argument("--engines", default="torch,sparse,lowbit,onnxruntime",
                       help="comma-separated engines (default: torch,sparse,lowbit,onnxruntime)")
    bench.add_argument("--batch-sizes", default="1,32,256",
                       help="comma-separated batch sizes (default: 1,32,256)")
    bench.add_argument("--repeats", type=int, default=20, help="timed calls (default: 20)")
    bench.add_argument("--warmup", type=int, default=3, help="untimed calls (default: 3)")
    bench.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    bench.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                       help="stop repeating once this many seconds are spent")
    bench.add_argument("--json", metavar="OUT", default=None, help="write the results as JSON")
    bench.add_argument("--seed", type=int, default=0)
    bench.set_defaults(func=bench_command)
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
    from workbench.panels.offline import serve_locally

    serve_locally()  # scripts and stylesheets from this server, never from a CDN

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


DEFAULT_BENCH_VARIANTS = (("prune", "magnitude", {"sparsity": 0.9}),
                          ("quantize", "uniform", {"bits": 8}),
                          ("quantize", "uniform", {"bits": 4}))


def _csv_list(text: str, cast=str) -> list:
    return [cast(t.strip()) for t in text.split(",") if t.strip()]


def bench_command(args) -> int:
    from workbench.backend import benchmark
    from workbench.errors import WorkbenchError
    from workbench.session import Session

    try:
        engines = _csv_list(args.engines)
        batch_sizes = _csv_list(args.batch_sizes, int)
    except ValueError as err:
        print(f"workbench: bad --batch-sizes: {err}", file=sys.stderr)
        return 2
    try:
        session = Session.default(seed=args.seed, progress=True)
        if args.recipes:
            session.load_recipes(args.recipes)
        else:
            for kind, method, params in DEFAULT_BENCH_VARIANTS:
                getattr(session, kind)(method, **params)
        result = benchmark(session, engines, batch_sizes=batch_sizes, repeats=args.repeats,
                           warmup=args.warmup, threads=args.threads,
                           time_budget=args.time_budget, progress=True)
    except (WorkbenchError, OSError) as err:
        print(f"workbench: {err}", file=sys.stderr)
        return 2
    print(bench_table(result))
    if args.json:
        result.to_json(args.json)
        print(f"results written to {args.json}")
    return 0


def bench_table(result) -> str:
    """Variant × engine rows; per batch size the median/p90 latency (ms) and samples/s."""
    batches = result.settings["batch_sizes"]
    head = f"{'variant':<18}{'engine':<18}" + "".join(
        f"{f'b={b} med/p90 ms':>22}{'samples/s':>11}" for b in batches) + \
        f"{'weights B':>11}{'peak mem B':>12}{'acc':>7}"
    lines = [head]
    pairs = dict.fromkeys((r.variant, r.engine) for r in result.rows)
    for v, e in pairs:
        rows = [result.row(v, e, b) for b in batches]
        err = next((r.error for r in rows if r.error), None)
        if err:
            lines.append(f"{v:<18}{e:<18}error: {err}")
            continue
        cells = "".join(f"{f'{r.median_ms:.3f}/{r.p90_ms:.3f}':>22}{r.throughput:>11.0f}"
                        for r in rows)
        peak = max((r.peak_memory_bytes or 0) for r in rows)
        lines.append(f"{v:<18}{e:<18}{cells}{rows[0].weight_bytes or 0:>11}{peak:>12}"
                     f"{rows[0].accuracy:>7.3f}")
    return "\n".join(lines)


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
