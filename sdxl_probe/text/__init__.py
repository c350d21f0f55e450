"""Caption text: CLIP BPE, weighted syntax, the kohya caption pipeline, chunked encoding."""
