"""Transports carry audio and events between a caller and a Session; they know nothing of models."""
