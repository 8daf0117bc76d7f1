"""Steering vectors: `SteeringVector` ({layer: direction}), extraction from contrast pairs, applying them
to an expert (add, ablate, norm-preserving, per position) and reading/writing them (safetensors, GGUF)."""
