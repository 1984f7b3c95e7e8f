"""The chains: jobs that drive the stages below through their public functions (the organism
world, the main job, the steering sweep and the cross-domain experiment)."""

# The house's top floor (tests/test_layers.py reads it): may import every floor below.
FLOOR = 3
