# Floor 2, a stage (tests/test_layers.py reads it): imports floors 0 and 1, never eval.
FLOOR = 2
