"""parabench's example plugin (docs/plugins.md)."""
