"""Helpers shared by several test modules (never defined in a test_*.py file)."""
