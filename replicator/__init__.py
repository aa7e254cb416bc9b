"""Talking to the source: publication and slot, initial copy, pgoutput stream, Debezium/Kafka."""
