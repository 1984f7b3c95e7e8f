"""The ground floor: what every stage shares and nothing else.

Chat tokenization and answer spans (:mod:`~interp.base.chat`), answer and judged records
(:mod:`~interp.base.records`), atomic writes (:mod:`~interp.base.atomic`), provenance
(:mod:`~interp.base.provenance`), the domains (:mod:`~interp.base.domains`), model loading
(:mod:`~interp.base.loading`), where things are in a model (:mod:`~interp.base.models`), the
command-line conventions (:mod:`~interp.base.cli`), checks on the files a command is given
(:mod:`~interp.base.paths`) and one writer per output (:mod:`~interp.base.locks`). Modules here import torch, transformers and
each other, never a stage; ``tests/test_layers.py`` enforces it.
"""

# Floor 0, the ground floor (tests/test_layers.py reads it): imports no other floor.
FLOOR = 0
