"""Training: optimiser settings and the preset table (:mod:`.recipes`), the SVI object and its
NaN-guarded update (:mod:`.svi`), the optimiser (:mod:`.optim`), the compiled step for one seed,
K seeds or a device mesh (:mod:`.step`, :mod:`.parallel`), checkpoints (:mod:`.checkpoint`),
the training loop (:mod:`.loop`) and the process's allocator setting (:mod:`.allocator`)."""
