"""Post-training: GRPO and DPO on Janus models, rewards, best-of-N.

This package sits above both the training package (losses, checkpoints, LoRA) and the
inference pipeline (online sampling), so that `openjanus.train` keeps importing neither.
"""
