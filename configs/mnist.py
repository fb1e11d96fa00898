"""The paper's headline run: 100 devices, IID MNIST (600 each), MLP 784-200-200-10, complete graph.

Usage: python -m experiments.train --config=configs/mnist.py --workdir=runs/mnist
Every field is documented in docs/config_reference.md; override any with --config.FIELD=VALUE.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0                       # one seed for everything: partition, graph, inits, shuffling,
    #                                  link failures

    # Data.
    c.dataset = "mnist"              # mnist | fashion_mnist
    c.data_dir = ""                  # directory with the IDX files; "" = search (see README)
    c.num_devices = 100              # N, the number of simulated devices
    c.samples_per_device = 600       # -1 = use all training data (iid/shards) or the whole set
    c.partition = "iid"              # iid | shards | dirichlet | skew
    c.shards_per_device = 2          # partition=shards
    c.dirichlet_alpha = 0.5          # partition=dirichlet
    c.skew_sigma = 1.0               # partition=skew: log-normal sizes exp(sigma z)
    c.skew_top_fraction = 0.0        # partition=skew: >0 -> device 0 holds this share of the data
    c.skew_fractions = ()            # partition=skew: (f_1, ..., f_G) -> G groups of consecutive
    #                                  devices, as equal as possible (the first N mod G groups
    #                                  one device more); group g shares f_g of the data equally.
    #                                  f_g > 0, sum 1 (within 1e-6), G <= N; e.g. (0.01, 0.99):
    #                                  half the devices share 1%. () = off; not with
    #                                  skew_top_fraction
    c.min_samples_per_device = 1     # every device gets at least this many samples

    # Model.
    c.model = "mlp"                  # mlp | cnn | lenet_gn | resnet20 | resnet18 | vgg11
    c.hidden_sizes = (200, 200)      # hidden dense widths: the MLP's (784-200-200-10) and the
    #                                  CNN's head after its two conv+pool layers (3136-200-200-10)
    c.width_multiplier = 1.0         # scales every hidden width (conv channels, hidden dense
    #                                  layers; not the logits) to max(1, round(c * w)); > 0;
    #                                  1.0 = the published model (docs/models.md)

    # Graph and consensus.
    c.topology = "complete"          # complete | cycle | path | star | grid | torus |
    #                                  random_geometric | erdos_renyi | watts_strogatz |
    #                                  barabasi_albert | random_regular | edgelist |
    #                                  exponential (directed: i -> i + 2^k mod N) |
    #                                  radio (who hears whom: channel fields below)
    c.graph_radius = 0.2             # random_geometric
    c.graph_p = 0.1                  # erdos_renyi, watts_strogatz (rewiring)
    c.graph_k = 4                    # watts_strogatz
    c.graph_m = 2                    # barabasi_albert
    c.graph_degree = 4               # random_regular
    c.graph_rows = -1                # grid/torus rows; -1 = most square
    c.edgelist_path = ""             # topology=edgelist
    c.directed = False               # topology=edgelist: "u v" means u sends to v (directed)
    c.allow_disconnected = False     # a disconnected graph is an error unless this is set
    c.graph_resample = False         # random topologies: use graph seed seed + 1000 k for the
    #                                  first k = 0..99 whose graph is connected (an error if none
    #                                  is); the seed used is summary.json's graph_seed. Refused
    #                                  for deterministic topologies and with allow_disconnected
    c.mixing = "auto"                # auto (the algorithm's default: data_size for p2pl) |
    #                                  data_size | metropolis | uniform | max_degree | fedavg |
    #                                  data_size_mh (Metropolis-Hastings: consensus weights =
    #                                  data shares; undirected links only)
    c.consensus_backend = "auto"     # auto | dense | gather
    c.sync = "max_norm"              # max_norm | none | shared_seed
    c.link_failure_prob = 0.0        # each edge down with this probability each round
    c.link_failure_mode = "symmetric"  # symmetric | asymmetric
    c.link_burst_prob = 0.0          # probability that a round is a burst ...
    c.link_burst_failure_prob = 0.9  # ... in which each link is down with this probability
    c.dropout_prob = 0.0             # each device offline (no training, no messages) per round
    #                                  (fedavg averages the online devices). Which algorithm
    #                                  takes which fault: docs/ALGORITHMS.md
    c.delay_rounds = 0               # messages arrive this many rounds late (max, if random)
    c.delay_mode = "fixed"           # fixed | random (uniform on 0..delay_rounds per link)
    c.time_varying = False           # draw a fresh graph each round (random_geometric with
    #                                  graph_radius, or erdos_renyi with graph_p), or cycle the
    #                                  one-peer exponential graph (exponential)

    # Wireless channel and the energy / time bill (docs/wireless.md).
    c.channel = "ideal"              # ideal (link_failure_prob's Bernoulli links) | wireless
    #                                  (path loss, shadowing, Rayleigh fading, SNR threshold)
    c.area_m = 500.0                 # devices uniform in an area_m x area_m square (m);
    #                                  random_geometric: its points scaled; base station (fedavg)
    #                                  at the centre
    c.tx_power_dbm = 0.0             # device transmit power (dBm; 0 dBm = 1 mW, IEEE 802.15.4)
    c.bs_tx_power_dbm = 30.0         # base-station transmit power (dBm; a small cell)
    c.noise_density_dbm_hz = -174.0  # thermal noise N0 at 290 K (dBm/Hz)
    c.bandwidth_hz = 1e6             # B per link (orthogonal channels: no interference)
    c.path_loss_exponent = 3.0       # gamma of the log-distance path loss (2 = free space)
    c.path_loss_ref_db = 40.0        # loss at 1 m (dB; free space at 2.4 GHz is 40.0 dB)
    c.shadowing_std_db = 4.0         # log-normal shadowing sigma (dB), fixed per link for the run
    c.fading = "rayleigh"            # rayleigh (drawn per link per round) | none (snr = mean)
    c.snr_threshold_db = 5.0         # a message arrives when its SNR is at or above this (dB)
    c.radio_margin_db = 3.0          # topology=radio: pairs whose mean SNR (no fading) is at
    #                                  least snr_threshold_db + this are neighbours
    c.round_deadline_s = 0.0         # a message whose air time exceeds this is lost (with
    #                                  delay_rounds > 0: arrives up to that many rounds late);
    #                                  0 = no deadline
    c.loss_correction = "renormalize"  # renormalize (weights over what arrived) |
    #                                  inverse_probability (weights / link success probability)
    c.transmission = "broadcast"     # broadcast (one rateless transmission to all neighbours)
    #                                  | unicast (a copy per neighbour, concurrently)
    c.rx_power_w = 0.05              # receiver power while listening (W)
    c.cpu_freq_hz = 1e9              # f: a device's clock (compute time C / f per sample)
    c.cpu_cycles_per_sample = 0.0    # C: cycles of one training sample; 0 = XLA's FLOP count of
    #                                  one forward and backward pass (one FLOP per cycle)
    c.cpu_kappa = 1e-28              # effective switched capacitance: kappa C f^2 J per sample

    # Algorithm and training.
    c.algorithm = "p2pl"             # p2pl | fedavg | local | centralized | dpsgd |
    #                                  gradient_tracking | push_sum | choco (docs/ALGORITHMS.md)
    c.rounds = 100                   # round cap (may be raised to extend a finished run)
    c.local_epochs = 1               # E, local epochs per round (when local_steps = 0)
    c.local_steps = 0                # T > 0: exactly T local SGD steps per round instead
    c.compressor = "none"            # choco: none | top_k | random_k | qsgd | sign
    c.compress_ratio = 0.01          # top_k / random_k: fraction of each tensor sent
    c.qsgd_bits = 4                  # qsgd: bits per level (2^bits - 1 levels, + a sign bit)
    c.consensus_step = 1.0           # choco: gamma, the consensus step size in (0, 1]
    c.batch_size = 10                # B, local mini-batch size
    c.learning_rate = 0.05           # eta, SGD learning rate
    c.momentum = 0.9                 # beta (optax.sgd: m <- g + beta m, theta <- theta - eta m)
    c.momentum_after_consensus = "keep"  # keep | reset | mix
    c.nesterov = False               # Nesterov momentum (optax.sgd nesterov: the step is
    #                                  g + beta m instead of m)
    c.weight_decay = 0.0             # coupled L2 (PyTorch SGD's): g <- grad + wd theta; >= 0
    c.lr_schedule = "constant"       # constant | cosine | step: the learning rate's factor per
    #                                  round, from the state's round counter (docs: schedules)
    c.lr_warmup_rounds = 0           # W: linear warm-up (r + 1) / W over rounds 0 .. W - 1,
    #                                  then the schedule over the remaining rounds
    c.lr_step_rounds = ()            # lr_schedule=step: rounds where the rate is multiplied by
    #                                  lr_step_gamma, each in [W, rounds); () = rounds / 2 and
    #                                  3 rounds / 4
    c.lr_step_gamma = 0.1            # lr_schedule=step: the factor at each milestone, in (0, 1]
    c.augment = False                # per-device, per-step random crop (pad 4) and horizontal
    #                                  flip of every image, drawn from the device's key
    c.compute_dtype = "float32"      # float32 | bfloat16: the local steps' forward and backward
    #                                  pass (parameters and optimizer state stay float32)
    c.shard = False                  # split the device axis over all accelerators (mesh)
    c.distributed = False            # with shard: one process of a multi-process run (every
    #                                  process runs the same command; docs/multihost.md)
    c.coordinator_address = ""       # distributed: process 0's host:port; "" (with the next
    #                                  two unset) = JAX detects the cluster (SLURM, TPU, MPI)
    c.num_processes = 0              # distributed: how many processes; 0 = detected
    c.process_id = -1                # distributed: this process, 0 .. num_processes - 1
    c.distributed_timeout_s = 300    # distributed: seconds to wait for every process to join
    c.device_block = -1              # local phase layout: -1 auto (2 on CPU, 0 on GPU/TPU);
    #                                  0 = vmap all devices; k = lax.map over blocks of k
    c.local_buckets = -1             # work-proportional local phase: devices grouped by size
    #                                  into at most this many scans of their own length;
    #                                  -1 auto (up to 8), 1 = one padded scan for everybody

    # Evaluation.
    c.eval_every = 1                 # evaluate every this many rounds (and the last, and every
    #                                  round of a hold); rounds_to_target's resolution
    c.eval_after_local = False       # also evaluate the models before consensus
    c.eval_backfill = True           # with eval_every > 1: once an evaluation meets the target,
    #                                  also evaluate the rounds since the previous evaluation
    #                                  (their params are kept: (eval_every - 1) x N x P x 4
    #                                  bytes) until rounds_to_stable_target is found; it is then
    #                                  exact when target_hold_rounds >= eval_every
    c.target_accuracy = 0.97         # target of rounds_to_target (every device must reach it)
    c.target_hold_rounds = 10        # rounds_to_stable_target: every device at or above the
    #                                  target for this many consecutive rounds, all evaluated
    #                                  (integer >= 1; 1 = the first evaluated crossing)
    c.stop_at_target = True          # stop when that hold is complete (rounds_to_stable_target
    #                                  found), not at the first crossing
    c.divergence_loss_factor = 100.0  # a round whose train or test loss is above this x ln(number
    #                                  of classes) (the loss of a uniform guess) counts as
    #                                  diverged, like a non-finite metric or parameter: the run
    #                                  stops with exit status 3. 0 = only non-finite values
    c.eval_device_chunk = 10         # models evaluated together (memory bound)
    c.eval_example_chunk = 2000      # test examples per chunk (memory bound)
    c.memory_limit_gb = 0.0          # memory the run may use, GB (1e9 bytes), checked against
    #                                  XLA's figures for the compiled round and evaluation
    #                                  before the first round; 0 = the accelerator's (or on CPU
    #                                  the host's available) memory; < 0 = no check

    # Outputs and operation.
    c.checkpoint_every = 10          # checkpoint every this many rounds (and at exit); 0 = at
    #                                  exit only. Rerunning on the same workdir resumes
    c.progress = True                # live progress line and one log line per evaluated round;
    #                                  False = quiet (start and end lines only)
    c.tensorboard = True             # also write TensorBoard event files (workdir/tensorboard)
    return c
