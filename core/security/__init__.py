"""Secrets at rest, webhook signatures, signed links and redaction."""
