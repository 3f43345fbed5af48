"""Test inputs in the real published schemas of the paper's datasets, with real photographs.

`photos`: real photographs (the scikit-image wheel's `skimage/data/`) and the broken files real
datasets hold; `llava`: LLaVA-665K; `vora_recap`: the released VoRA recap parquet. Every builder writes
files to a folder the test gives and returns what it wrote, so tests assert exact counts.
"""
