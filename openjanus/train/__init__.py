"""Training: the data pipeline (data, sequences, packing, mixing, pretokenize, stream,
image_data), the batch contract (batch), the objectives (objectives, vq_objective, siglip), the
task registry (tasks), the Trainer (trainer, logs) and run assembly (run). Import the
submodules you need; nothing heavy is imported here."""
