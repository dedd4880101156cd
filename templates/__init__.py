"""Jinja2 templates shipped with shipcast, one folder per channel."""
