"""Token probe: what each text encoder receives of one caption (chunks, cuts, lost tags)."""
