"""One module per service; each exposes ``ROUTES``. Shared SQL lives in ``queries``."""
