"""The model: the event envelope, event types, the partners file, examples."""
