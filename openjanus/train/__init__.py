"""Training: data pipeline (data, sequences, packing, mixing, pretokenize, stream), the batch
contract and objective (batch), and the loop. Import the submodules you need; nothing heavy
is imported here."""
