"""Foundations: config tools, the schema, the experiment config and the manifest. Imports nothing else of tfads."""
