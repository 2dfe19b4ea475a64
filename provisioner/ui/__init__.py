"""Rendering of core results: rich tables for people, JSON for programs."""
