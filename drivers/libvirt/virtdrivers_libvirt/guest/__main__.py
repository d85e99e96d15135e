"""``python -m virtdrivers_libvirt.guest build|seed|prune``: the tiny guest from a shell.

Handy for a first (cold) build before a test run, for looking at the image by hand, and for
making a seed to boot it with::

    python -m virtdrivers_libvirt.guest build [--cache DIR] [--force]
    python -m virtdrivers_libvirt.guest seed DIR --user-data FILE [--hostname NAME] [--iso]
    python -m virtdrivers_libvirt.guest prune [--cache DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from virtdrivers_libvirt.guest import GuestBuildError, SeedError, ensure_tiny_guest, make_seed, prune, userdata_marker


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m virtdrivers_libvirt.guest", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build (or find cached) the tiny guest and print its metadata as JSON")
    b.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="cache directory (default: $VIRTDRIVERS_CACHE/guest or drivers/libvirt/.cache/guest)",
    )
    b.add_argument("--force", action="store_true", help="rebuild even if a matching image is cached")
    s = sub.add_parser("seed", help="write a NoCloud seed image into a directory")
    s.add_argument("directory", type=Path)
    s.add_argument("--user-data", type=Path, required=True)
    s.add_argument("--hostname", default="tiny")
    s.add_argument("--instance-id", default="iid-tiny")
    s.add_argument("--iso", action="store_true", help="ISO9660 'cidata' instead of vfat 'CIDATA'")
    p = sub.add_parser("prune", help="remove cached images and .debs other than the current build's")
    p.add_argument("--cache", type=Path, default=None)
    args = parser.parse_args(argv)

    try:
        if args.command == "build":
            started = time.monotonic()
            image = ensure_tiny_guest(args.cache, force=args.force)
            data = json.loads(image.to_json())
            data["path"] = str(image.path)  # guest.json holds it relative to its directory
            print(json.dumps(data, indent=2, sort_keys=True))
            print(f"# {time.monotonic() - started:.1f} s", file=sys.stderr)
        elif args.command == "seed":
            data = args.user_data.read_bytes()
            meta = {"instance-id": args.instance_id, "local-hostname": args.hostname}
            path = make_seed(args.directory, data, meta, fs="iso9660" if args.iso else "vfat")
            print(path)
            print(f"# expect on the console: {userdata_marker(data)}", file=sys.stderr)
        else:
            current = ensure_tiny_guest(args.cache)
            for removed in prune(args.cache, keep=current.key):
                print(f"removed {removed}")
    except (GuestBuildError, SeedError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
