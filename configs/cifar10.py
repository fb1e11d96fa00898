"""CIFAR-10 on 100 devices: ResNet-20 with GroupNorm, Dirichlet split, augmentation.

Usage (needs the CIFAR-10 binary version, see README "CIFAR data"; it cannot be downloaded on
machines without internet, and TFDS fetches it where it can):
  python -m experiments.train --config=configs/cifar10.py --workdir=runs/cifar10

The recipe follows the ResNet-20-GN CIFAR-10 runs of Lin, Karimireddy, Stich & Jaggi,
"Quasi-Global Momentum: Accelerating Decentralized Deep Learning on Heterogeneous Data"
(ICML 2021; their code's README, github.com/epfml/quasi-global-momentum): GroupNorm with 2
groups (after Hsieh et al., ICML 2020), mini-batch 32 per device, Nesterov momentum 0.9,
weight decay 1e-4, learning rate 0.1 per 64 samples, decayed by 10 at 50% and 75% of the
epochs, Dirichlet non-IID split with alpha = 1, 300 epochs, random crop and flip.
What differs, and why:
  * 100 devices on the complete graph (the P2PL paper's setup, its next check) instead of 16
    on a ring; each device holds 500 images.
  * learning rate 0.05 = 0.1 x 32 / 64 without their n-fold scale-up and warm-up: they scale
    the rate by the number of workers because D-SGD mixes after every step (an n x 32 batch);
    a P2PL device takes a whole local epoch alone between mixings, i.e. the steps of one model
    at batch 32. Set lr_warmup_rounds (and a larger learning_rate) to try the scaled rule.
  * one round = one local epoch of every device = one pass over the training set, so their
    300 epochs are 300 rounds and the milestones rounds 150 and 225.
On CPU this is days; on one H200 about a second per round is expected (benchmarks/models.py).
"""

import ml_collections

from configs import mnist


def get_config() -> ml_collections.ConfigDict:
    c = mnist.get_config()
    c.dataset = "cifar10"
    c.samples_per_device = -1        # all 50,000 training images, 500 per device on average
    c.partition = "dirichlet"
    c.dirichlet_alpha = 1.0
    c.model = "resnet20"
    c.batch_size = 32
    c.learning_rate = 0.05
    c.momentum = 0.9
    c.nesterov = True
    c.weight_decay = 1e-4
    c.lr_schedule = "step"           # x0.1 at rounds 150 and 225 (lr_step_rounds=() default)
    c.lr_step_gamma = 0.1
    c.augment = True
    c.rounds = 300
    c.eval_every = 5
    c.target_accuracy = 0.8          # every device at 80% test accuracy
    c.stop_at_target = False         # the schedule's horizon is `rounds`: run it out
    c.eval_device_chunk = 4
    c.eval_example_chunk = 1000
    return c
