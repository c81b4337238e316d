"""PCMA training, evaluation against image-blind baselines, and shipping a checkpoint (torch)."""
