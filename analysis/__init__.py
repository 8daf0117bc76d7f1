"""Studies built on `steer`: the letters bias audit (prompts, lexicons, metrics, statistics, reports),
the router evaluation, interpretability tools for the notebooks, and the `steer` command line (`cli/`)."""
