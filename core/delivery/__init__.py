"""The delivery machinery: consume, dispatch to targets, attempt, retry,
settle, isolate targets from each other, and keep their health."""
