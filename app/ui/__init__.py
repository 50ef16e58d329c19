"""The dashboard: server-rendered pages (Jinja2) with a little JavaScript for live progress (`routes/ui.py`)."""
