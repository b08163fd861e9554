"""LongBench v1 harness for s3serve: the official protocol (prompt templates, middle
truncation, chat/raw mapping, greedy decoding, metrics) run through the server's
OpenAI-compatible HTTP API, one table per retrieval mode."""

__version__ = "1.0.0"
