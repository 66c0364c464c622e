"""`codiray` — the console entry point.

    codiray demo                      # toy world -> 4 prepare jobs -> CoDi schedule -> any-to-any -> eval -> report
    codiray prepare laion --metadata M --media D --out O
    codiray train --schedule codi_demo --data laion=L --data webvid=W --data audiocaps=A
    codiray generate --checkpoint RUN_DIR --input text="a red circle moving left" --output video,audio

Config overrides are given after the flags as ``key=value`` (or ``--key=value``), dotted for nested
keys, e.g. ``optim.lr=3e-4``. Any error in usage or config prints one line and exits with code 2.
"""

from __future__ import annotations

import argparse
import sys

from common.errors import CodirayError


def _prepare():
    from pipelines import cli

    return cli


def _train():
    from training import cli

    return cli


def _generate():
    from training import generate

    return generate


def _demo():
    from codiray import demo

    return demo


def _cluster():
    from infra import submit

    return submit


def _bench():
    from codiray import bench

    return bench


def _evaluate():
    from codiray import evaluate

    return evaluate


def _convert():
    from codiray import convert

    return convert


def _report():
    from codiray import report

    return report


# Subcommand -> the module that registers it. Only the invoked one is imported (training's pull in
# torch, ~2 s), so `codiray submit`/`jobs`/`prepare` start fast; `--help` imports them all.
COMMANDS = {"prepare": _prepare, "train": _train, "generate": _generate, "demo": _demo,
            "submit": _cluster, "jobs": _cluster, "bench": _bench, "eval": _evaluate,
            "convert": _convert, "report": _report}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 — argparse's default prints usage + message
        self.exit(2, f"codiray: error: {message} (see '{self.prog} --help')\n")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; with ``argv`` naming a known subcommand, only that command's module is loaded."""
    parser = _Parser(
        prog="codiray",
        description="Train composable any-to-any diffusion models (CoDi) at cluster scale on Ray.",
        epilog="Run 'codiray SUBCOMMAND --help' for each subcommand's flags and config keys.",
    )
    # infra's `submit` checks the command it ships against every subcommand name; the table lives
    # here, on top, and travels down on the parsed args (no import of the CLI from below).
    parser.set_defaults(codiray_commands=tuple(sorted(COMMANDS)))
    subparsers = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", parser_class=_Parser)
    subparsers.required = True
    command = next((a for a in (argv or []) if not a.startswith("-")), None)
    loaders = [COMMANDS[command]] if command in COMMANDS else list(dict.fromkeys(COMMANDS.values()))
    for load in loaders:
        load().register(subparsers)
    return parser


def split_overrides(extra: list[str]) -> tuple[list[str], list[str]]:
    """Separate ``key=value`` config overrides from anything argparse did not recognise."""
    overrides, unknown = [], []
    for item in extra:
        (overrides if "=" in item and not item.startswith("-=") else unknown).append(item)
    return overrides, unknown


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args, extra = parser.parse_known_args(argv)
    overrides, unknown = split_overrides(extra)
    if unknown and not getattr(args, "accepts_passthrough", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if overrides and not getattr(args, "accepts_overrides", False):
        parser.error(f"'{args.command}' takes no key=value config overrides: {' '.join(overrides)}")
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
