"""The toy world (procedural scenes with ground truth), its dataset writer and a classical judge."""
