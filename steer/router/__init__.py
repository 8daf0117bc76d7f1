"""Interpretable routing across experts: named activation features on a reader expert choose the
expert, a policy adjusts it (steering, rewards), and every decision is written down."""
