"""Reward-augmented decoding (RAD): rewards read from an expert's activations (probes, vectors, a small
head), their training, cheap look-ahead, the decoding loop's top-k re-weighting, and sweeps that compare
it with steering at matched fluency."""
