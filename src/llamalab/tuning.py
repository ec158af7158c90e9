"""Sizes tuned to the hardware, not hyper-parameters of a model: kept apart from `config`, and free of torch so that
the memory accounting (`analysis`) can read them."""

# Logits per chunk of the training loss (`model.head_loss`), by device type: ~16 MB stays in a CPU's L3 cache,
# ~256 MB keeps a GPU's matrix products large.
LOSS_CHUNK_LOGITS = {"cpu": 2**22, "cuda": 2**26}
