"""Test and benchmark support: the dev stack of real processes, the offline wandb reader."""
