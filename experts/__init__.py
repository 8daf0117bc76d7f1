"""The experts and their activations: loading real and tiny experts, TransformerLens names at Hugging Face
speed, scoped hooks, batched generation and capture. Imports nothing from `steer` or `analysis`."""
