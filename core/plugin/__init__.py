"""The plugin contract: the hooks, the channel base class, and the registry
that loads plugins for one running shipcast."""
