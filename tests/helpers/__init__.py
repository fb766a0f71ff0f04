"""Helpers shared by tests of several modules (no tests here)."""
