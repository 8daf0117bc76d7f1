"""steerlab's library: read and edit the activations of small experts (`experts`), one room per capability.

- `vectors/`  steering vectors: the value, extraction from contrast pairs, applying them (add, ablate), GGUF/safetensors io
- `evaluate/` what an intervention does: scorers, coefficient sweeps, the layer search, paired statistics
- `rad/`      reward-augmented decoding: rewards read from activations, their training, look-ahead, decoding, comparisons
- `router/`   routing requests to experts by named activation features, with every decision written down
- `serve/`    the router and its experts as an HTTP service (request checks, Ray Serve)
- `scale/`    where batch work runs (local or a Ray actor pool) and resumable row files

`errors.py` and `datasets.py` (the shipped data) serve every room. Dependencies point one way:
`experts` <- `steer` <- `analysis` (which holds the command line).
"""
