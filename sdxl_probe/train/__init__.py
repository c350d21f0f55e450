"""Training: the shared resumable state and graceful stop, and the toy model's recipe."""
