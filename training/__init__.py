"""Synthetic data sets, training and DRKD distillation — planned, see the open issues."""
