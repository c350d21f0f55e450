"""The toy model's pretraining recipe: VAE, then TE1 + TE2 + UNet jointly, then export."""
