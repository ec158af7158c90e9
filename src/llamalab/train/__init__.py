"""Training: batches of prepared token data (`batches`), settings (`config`), AdamW and the warmup + cosine schedule
(`optim`), model set-up (`build`), LoRA (`lora`), the loop with exact resume (`trainer`, `snapshots`) and its
records (`metrics`). The corpus and the token shards are `llamalab.data`. Import from the modules: this package
stays light."""
