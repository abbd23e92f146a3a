"""Arrives in a later issue; see DEVELOPERS.md."""
