"""Inference in layers, each importing only the ones before it:

    sampling   pure functions on logits (filters, sampling, guidance, Jacobi's accept test)
    runner     rows of one KV cache, prefill, and one decoder per mode (image, text, Jacobi)
    scheduler  plain-Python admission: queue order, row first-fit, KV budget, chunking
    engine     the worker thread that drives scheduler and runner; handles and streaming
    pipeline   loading a model and processor; owns its engine (the Python API)

Nothing here imports the server, the evaluation package, the CLI or training.
"""
