"""The depth study's settings (open question 1, on MNIST): one config per setting.

Usage: python -m experiments.train --config=configs/depth.py:SETTING --workdir=runs/depth/SETTING
SETTING = <model>-<graph>-<sync>, every combination of
  model  mlp1, mlp2, mlp4   MLPs with 1, 2 and 4 hidden layers of 200 units (mlp2 is the paper's
                            784-200-200-10); depth and parameter count move together: 159k,
                            199k and 279k parameters
         cnn                the small CNN (two 3x3 conv + 2x2 pool layers of 32 and 64
                            channels, then 200-200 dense): 0.69M parameters
  graph  complete, rgg      the complete graph, or the random geometric graph of radius 0.25
                            redrawn by rule until connected (graph_resample; the seed used is
                            summary.json's graph_seed)
  sync   max_norm, none     max norm synchronization, or independent initialisations
e.g. configs/depth.py:mlp4-rgg-none. Everything else is configs/mnist.py's headline setting
(100 devices x 600 IID images, B = 10, lr 0.05, momentum 0.9, target 97%); the study itself
(seeds, report) is issue #16's. The CNN on 100 distinct models is slow on CPU to evaluate:
pass --config.eval_every=5 there.
"""

import ml_collections

from configs import mnist

MODELS = {"mlp1": ("mlp", (200,)), "mlp2": ("mlp", (200, 200)),
          "mlp4": ("mlp", (200, 200, 200, 200)), "cnn": ("cnn", (200, 200))}
GRAPHS = {"complete": {"topology": "complete"},
          "rgg": {"topology": "random_geometric", "graph_radius": 0.25, "graph_resample": True}}
SYNCS = ("max_norm", "none")
SETTINGS = tuple(f"{m}-{g}-{s}" for m in MODELS for g in GRAPHS for s in SYNCS)


def get_config(setting: str = "mlp2-complete-max_norm") -> ml_collections.ConfigDict:
    if setting not in SETTINGS:
        raise ValueError(f"configs/depth.py:{setting} is not a setting; allowed: "
                         + ", ".join(SETTINGS))
    model, graph, sync = setting.split("-")
    c = mnist.get_config()
    c.model, c.hidden_sizes = MODELS[model]
    for field, value in GRAPHS[graph].items():
        c[field] = value
    c.sync = sync
    return c
