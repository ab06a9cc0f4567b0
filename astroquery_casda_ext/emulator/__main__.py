"""``python -m astroquery_casda_ext.emulator``: run a local CASDA until Ctrl-C."""
import argparse
import signal
import sys
import threading

from . import require

try:
    require()
except ModuleNotFoundError as exc:
    if __name__ != "__main__":
        raise
    print(f"python -m astroquery_casda_ext.emulator: {exc}", file=sys.stderr)
    sys.exit(2)

from .holdings import HoldingsConfig  # noqa: E402
from .options import EmulatorOptions  # noqa: E402
from .server import CasdaEmulator  # noqa: E402 - after the check above


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m astroquery_casda_ext.emulator",
                                     description="Serve a local emulation of CASDA over HTTP.")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (0 = any free port)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    parser.add_argument("--data-dir", default=None,
                        help="directory for the holdings and staged files (default: a temporary one)")
    parser.add_argument("--datalink-flavour", choices=("current", "old"), default="current")
    parser.add_argument("--href-style", choices=("plain", "encoded", "presigned"), default="plain")
    parser.add_argument("--no-range", action="store_true", help="downloads ignore Range headers")
    parser.add_argument("--bulk-count", type=int, default=0, help="extra large products (for benchmarks)")
    parser.add_argument("--bulk-size", type=int, default=HoldingsConfig.bulk_size,
                        help="size in bytes of each bulk product")
    parser.add_argument("--job-phases", type=job_phases, default=None, metavar="PHASE=SECONDS,...",
                        help="phases of every SODA job after RUN, e.g. QUEUED=0.5,EXECUTING=1.5")
    parser.add_argument("--latency", type=float, default=0.0, metavar="SECONDS",
                        help="added to every request (a client far from the archive)")
    parser.add_argument("--rate", type=float, default=None, metavar="BYTES_PER_S",
                        help="per-connection cap on download speed")
    parser.add_argument("--control", action="store_true",
                        help="serve /_emulator/log and /_emulator/reset (for the benchmarks)")
    parser.add_argument("--catalogue-rows", type=int, default=0,
                        help="rows of the large TAP table casda.bulk_continuum_component (e.g. 1000000)")
    return parser


def job_phases(text):
    """``"QUEUED=0.5,EXECUTING=1.5"`` -> ``(("QUEUED", 0.5), ("EXECUTING", 1.5))``."""
    try:
        phases = tuple((name.strip().upper(), float(seconds))
                       for name, seconds in (part.split("=") for part in text.split(",")))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected PHASE=SECONDS,..., got {text!r}") from None
    if not phases or any(seconds < 0 for _name, seconds in phases):
        raise argparse.ArgumentTypeError(f"expected PHASE=SECONDS,... with seconds >= 0, got {text!r}")
    return phases


def options_from(args):
    """The `EmulatorOptions` the command line asks for."""
    holdings = HoldingsConfig(bulk_count=args.bulk_count, bulk_size=args.bulk_size)
    extra = {"job_phases": args.job_phases} if args.job_phases else {}
    return EmulatorOptions(holdings=holdings, datalink_flavour=args.datalink_flavour,
                           href_style=args.href_style, range_support=not args.no_range,
                           request_latency=args.latency, transfer_rate=args.rate, control_api=args.control,
                           catalogue_rows=args.catalogue_rows,
                           **extra)


def main(argv=None):
    args = build_parser().parse_args(argv)
    emulator = CasdaEmulator(args.data_dir, port=args.port, host=args.host, options=options_from(args))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with emulator:
        print(f"CASDA emulator serving {emulator.url}", flush=True)
        print(f"  anonymous VO tools: {emulator.url}casda_vo_tools/", flush=True)
        print(f"  OPAL proxy:         {emulator.url}casda_vo_proxy/vo/", flush=True)
        # A local test account of the emulator, not a real OPAL password.
        print(f"  built-in test login: username {emulator.username!r}, "
              f"password {emulator.password!r}", flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
