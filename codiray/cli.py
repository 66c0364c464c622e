"""`codiray` — the console entry point.

    codiray demo                      # toy corpus -> Ray Data shards -> Ray Train+DeepSpeed -> PNGs
    codiray prepare laion --metadata M --media D --out O
    codiray train --recipe text_to_image_demo --data O [key=value ...]
    codiray generate --checkpoint RUN_DIR --prompt "a red circle on the left"

Config overrides are given after the flags as ``key=value`` (or ``--key=value``), dotted for nested
keys, e.g. ``optim.lr=3e-4``. Any error in usage or config prints one line and exits with code 2.
"""

from __future__ import annotations

import argparse
import sys

from codiray.errors import CodirayError


def _commands():
    # Imported lazily so `codiray --help` stays fast and a broken optional dep names its command.
    from codiray import bench, demo
    from infra import submit
    from pipelines import cli as prepare_cli
    from training import cli as train_cli
    from training import generate

    return [prepare_cli, train_cli, generate, demo, submit, bench]


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 — argparse's default prints usage + message
        self.exit(2, f"codiray: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="codiray",
        description="Train composable any-to-any diffusion models (CoDi) at cluster scale on Ray.",
        epilog="Run 'codiray SUBCOMMAND --help' for each subcommand's flags and config keys.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", parser_class=_Parser)
    subparsers.required = True
    for module in _commands():
        module.register(subparsers)
    return parser


def split_overrides(extra: list[str]) -> tuple[list[str], list[str]]:
    """Separate ``key=value`` config overrides from anything argparse did not recognise."""
    overrides, unknown = [], []
    for item in extra:
        (overrides if "=" in item and not item.startswith("-=") else unknown).append(item)
    return overrides, unknown


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    overrides, unknown = split_overrides(extra)
    if unknown and not getattr(args, "accepts_passthrough", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.overrides = overrides
    args.passthrough = unknown
    try:
        code = args.func(args)
    except CodirayError as err:
        print(f"codiray: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("codiray: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
