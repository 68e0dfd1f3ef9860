"""Conversations: turns with the model state after each, and their SQLite store."""
