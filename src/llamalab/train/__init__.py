"""Training: token data (`data`), the embedded story corpus (`stories`), settings (`config`), AdamW and the
warmup + cosine schedule (`optim`), model set-up (`build`), LoRA (`lora`), the loop with exact resume
(`trainer`, `checkpoints`) and its records (`metrics`). Import from the modules: this package stays light."""
