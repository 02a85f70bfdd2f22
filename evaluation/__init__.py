"""Quality of a synthetic dataset against real data: MAUVE, downstream accuracy, length and
label distributions, and a memorisation check against the private records. Beam-free."""
