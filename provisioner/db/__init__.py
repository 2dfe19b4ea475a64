"""Inventory database: SQLModel models, engine and migrations."""
