"""A/B in one session: base and head side by side, judged on paired rounds."""
