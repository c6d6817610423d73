"""The machine and the process: which allocator the process runs with (``allocator``, standard library
only, used before torch loads) and what the machine is (``machine``: CPU, instruction set, native bf16).

The bottom layer: every other part may record or consult it; it imports nothing else of the workbench.
"""
