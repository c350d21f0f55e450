"""``python -m sdxl_probe``: the CLI, so ``accelerate launch -m sdxl_probe train CONFIG`` runs the trainer."""

from sdxl_probe.cli import main

if __name__ == "__main__":
    main()
