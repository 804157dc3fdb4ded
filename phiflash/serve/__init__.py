"""`phiflash serve`: an OpenAI-compatible server for a classroom, on the stock servers.

:mod:`phiflash.serve.mlx` extends mlx-lm's server (batched generation on MLX),
:mod:`phiflash.serve.gguf` llama-cpp-python's (one request at a time, queued, on CPU);
:mod:`phiflash.serve.options` holds what both share: the teacher's controls and the request
checks. Command layer: it imports the engines.
"""
