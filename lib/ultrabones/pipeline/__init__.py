"""The plumbing: stage bookkeeping (metrics, figures, caches), the notebook runner, the command line, the summary."""
