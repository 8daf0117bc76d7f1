"""`steer experts ...`: the named experts, and what one of them is once loaded."""

from __future__ import annotations

import argparse
from typing import Any

from analysis.cli.common import add_expert_options, load_expert, set_command


def cmd_list(args: argparse.Namespace) -> list[dict[str, Any]]:
    from experts.loading import cache_folder
    from experts.registry import DEFAULT_EXPERT, REAL_EXPERTS, TINY_EXPERTS

    rows = []
    for spec in [*REAL_EXPERTS.values(), *TINY_EXPERTS.values()]:
        cached = spec.source in ("gguf", "gguf-parts") and cache_folder(spec).is_dir()
        rows.append({"name": spec.name, "default": spec.name == DEFAULT_EXPERT, "architecture": spec.architecture,
                     "chat": spec.chat_template, "capabilities": list(spec.capabilities), "cached": cached,
                     "description": spec.description})
    for row in rows:
        mark = "*" if row["default"] else " "
        print(f"{mark} {row['name']:<30} {row['architecture']:<8} {'chat' if row['chat'] else 'base':<5} "
              f"{'cached' if row['cached'] else '':<7} {', '.join(row['capabilities'])}")
    print("(* default; a local Hugging Face folder path is accepted wherever an expert name is)")
    return rows


def cmd_info(args: argparse.Namespace) -> dict[str, Any]:
    info = load_expert(args).info()
    for key in ("name", "description", "architecture", "n_layers", "d_model", "vocab_size", "n_params",
                "chat_template", "capabilities", "sha256", "packages", "device", "dtype", "folder"):
        print(f"{key:>14}: {info[key]}")
    decoding = info["decoding"]
    detail = (f"{decoding['packed_linears']} of {decoding['linears']} linears in the int4 kernel "
              f"({decoding['packed_share']:.0%} of their weights)" if decoding["decoding"] == "packed"
              else decoding.get("reason", ""))
    print(f"{'decoding':>14}: {decoding['decoding']} ({detail})")
    return info


def add_commands(sub) -> None:
    experts = sub.add_parser("experts", help="list and inspect experts")
    esub = experts.add_subparsers(dest="experts_command", required=True)
    listing = esub.add_parser("list", help="named experts")
    set_command(listing, cmd_list)
    info = esub.add_parser("info", help="load an expert and describe it")
    add_expert_options(info)
    set_command(info, cmd_info)
