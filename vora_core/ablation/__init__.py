"""`vora ablate`: the paper's ablations (§5.2) as a grid of model variants over one run's shared data.

variants.py  the grid (the paper's Table 2, or a variants file) and each variant's derived catalog;
chain.py     one resumable unit per variant: pretrain → merge → finetune → evaluate by the stage modules;
report.py    the figures (loss, distillation per block, data efficiency) and the table.
"""
