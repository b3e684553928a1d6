"""MIM content models: item image/text encoders, pre-training (DDA + DMA), C-SFT, evaluation.

torch + transformers + PIL + numpy + pandas only; callers hand in pandas DataFrames / lists.
Modules import lazily (nothing heavy here) so `import training.content` stays cheap.
"""
