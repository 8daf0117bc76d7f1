"""Serving the router and its experts: request parsing and policy checks (plain Python), and the Ray Serve
application that answers OpenAI-style completions with each routing decision attached."""
