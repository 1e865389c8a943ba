"""What a trained model says: inference and counting (:mod:`.inference`), importance-sampled
likelihoods (:mod:`.likelihood`), evaluation during training (:mod:`.evaluation`), metrics
(:mod:`.metrics`) and figures (:mod:`.figures`)."""
