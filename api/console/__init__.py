"""The operator console's static pages (served by api/routes/console_api.py)."""
