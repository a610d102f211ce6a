"""Reports from stored runs: the seeds' tables and plots as Markdown, CSV and PNG (``python -m parabench report``)."""
