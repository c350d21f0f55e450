"""Caption audit: what each text encoder sees of every caption of a dataset, per caption and per dataset."""
