"""`steer`: the command line, one module per command family over the library (nothing imports it).

Bad input exits 2 with a one-line message, no traceback. With `--json`, a command prints its result
as JSON on stdout (its human summary goes to stderr)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from analysis.cli import audit, experts, rad, route, run, serve, vector
from experts.errors import SteerlabError

FAMILIES = (experts, run, vector, audit, rad, route, serve)


def _quiet_libraries() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("steerlab")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="steer", description="Steer, read and audit small white-box experts.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for family in FAMILIES:
        family.add_commands(sub)
    _show_defaults(parser)
    return parser


def _nothing_to_show(default: object) -> bool:
    return default is None or default is False or default is argparse.SUPPRESS


class _DefaultsFormatter(argparse.HelpFormatter):
    """Help that shows each option's default, unless it is None or False (nothing to show)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if _nothing_to_show(action.default) or "%(default)" in text or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)".strip()


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Every command's --help shows each option's default."""
    parser.formatter_class = _DefaultsFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _show_defaults(sub)
        elif action.help is None and action.option_strings and not _nothing_to_show(action.default):
            action.help = "default: %(default)s"


def _run(func: Callable[[argparse.Namespace], dict[str, Any] | None], args: argparse.Namespace) -> None:
    """Run a command; with `--json`, its human text goes to stderr and its returned record to stdout
    (commands that stream one JSON record per line, `json_lines`, print them themselves)."""
    if not getattr(args, "json", False) or getattr(args, "json_lines", False):
        func(args)
        return
    with contextlib.redirect_stdout(sys.stderr):
        record = func(args)
    print(json.dumps(record, default=str))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _quiet_libraries()
    try:
        _run(args.func, args)
    except SteerlabError as error:
        print(f"steer: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
