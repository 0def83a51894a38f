"""Placeholder until the CRVQ implementation lands: registers no method yet."""
METHOD_ENTRIES: list = []
