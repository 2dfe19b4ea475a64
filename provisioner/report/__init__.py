"""Burn-in reports: terminal, Markdown, HTML (with plots), JSON and JUnit XML."""
