"""Placeholder until the GLVQ implementation lands: registers no method yet."""
METHOD_ENTRIES: list = []
