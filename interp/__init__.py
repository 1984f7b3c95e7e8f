# Floor 1, the core (tests/test_layers.py reads it): imports floor 0 (interp.base) only.
FLOOR = 1
