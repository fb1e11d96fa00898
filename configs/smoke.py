"""A tiny run through the real path: 4 devices, 2 rounds, small MLP, a few hundred samples."""

import ml_collections

from configs import mnist


def get_config() -> ml_collections.ConfigDict:
    c = mnist.get_config()
    c.num_devices = 4
    c.samples_per_device = 50
    c.hidden_sizes = (16,)
    c.topology = "cycle"
    c.rounds = 2
    c.batch_size = 10
    c.eval_example_chunk = 500
    c.stop_at_target = False
    return c
