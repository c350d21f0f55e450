"""The toy world (procedural scenes with ground truth), its captions, judge, dataset writer and shipped weights."""
