"""Interpretable routing across experts: named activation features on a reader expert choose the
expert, a policy adjusts it (steering, rewards), and every decision is written down."""

from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "data" / "router"  # the shipped task set, paraphrases and router
DEFAULT_ROUTER = DATA / "default"  # the trained router that ships with the package
