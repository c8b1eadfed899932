"""Helpers for the real-browser JupyterLab tests (tests/test_browser.py)."""
