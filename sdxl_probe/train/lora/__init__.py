"""The LoRA trainer: typed config, data (buckets, caches), peft network, one visible loop, kohya export."""
