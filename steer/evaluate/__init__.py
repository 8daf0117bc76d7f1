"""Measuring an intervention: scorers (what a text is), coefficient sweeps and the layer search (what a
vector does as it grows), and the one paired-statistics function every verdict in steerlab uses."""
