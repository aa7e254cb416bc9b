"""Talking to the source: publication and slot, initial copy, the pgoutput stream."""
