"""Maintenance scripts (translations)."""
