"""The Worker service: holds models in memory and streams tokens from an engine."""
