"""Embedding probe: tag versus sentence captions in TE1, TE2, the pooled vector and the context."""
