"""Parameter-efficient fine-tuning as transforms over parameter trees.

- `lora`: W = W0 + (alpha / r) A B on the kernels a path pattern selects (merge / unmerge).
- `prefix`: learned key/value prefixes per attention layer.
- `adapters`: bottleneck layers after each attention and MLP block.

The base parameters stay what they are; each method adds a small tree of its
own, the only thing trained and checkpointed. Import the submodules directly
(`from research.peft import lora`): `research.layers` imports `prefix`, so
this package imports nothing at load time.
"""
