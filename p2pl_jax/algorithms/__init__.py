"""The algorithm registry, and the one place that decides which config an algorithm accepts.

    p2pl | fedavg | local | centralized | dpsgd | gradient_tracking | push_sum | choco

Each algorithm is a `base.Algorithm` record in its own module; `get(name)` returns it.
`check_config` reads only the records' static facts (schemes, faults, directed, momentum
modes), so adding an algorithm never touches it.
"""

from __future__ import annotations

from p2pl_jax.algorithms import choco, dpsgd, fedavg, gradient_tracking, p2pl, push_sum
from p2pl_jax.algorithms.base import FAULTS, Algorithm, LocalResult, Round
from p2pl_jax.errors import ConfigError

_REGISTRY: dict[str, Algorithm] = {a.name: a for a in (
    p2pl.ALGORITHM, fedavg.FEDAVG, fedavg.LOCAL, fedavg.CENTRALIZED, dpsgd.ALGORITHM,
    gradient_tracking.ALGORITHM, push_sum.ALGORITHM, choco.ALGORITHM)}
ALGORITHMS = tuple(_REGISTRY)

__all__ = ["ALGORITHMS", "FAULTS", "Algorithm", "LocalResult", "Round", "check_config", "get",
           "register", "resolve"]


def get(name: str) -> Algorithm:
    """The registered algorithm `name` (ConfigError naming the allowed ones otherwise)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"algorithm={name!r} is not known; allowed: "
                          f"{', '.join(ALGORITHMS)}") from None


def register(algorithm: Algorithm) -> None:
    """Adds an algorithm to the registry (for research code outside the package)."""
    _REGISTRY[algorithm.name] = algorithm


def resolve(name: str, scheme: str) -> tuple[str, str]:
    """(algorithm, mixing scheme) a config means: mixing=auto is the algorithm's default;
    p2pl with mixing=fedavg is the server average W = 1 pi^T, i.e. fedavg."""
    if name == "p2pl" and scheme == "fedavg":
        return "fedavg", ""
    algo = get(name)
    if not algo.uses_graph:
        return name, ""
    return name, algo.default_scheme if scheme == "auto" else scheme


def requested_faults(c) -> dict[str, str]:
    """{fault: the config setting that asks for it} for the faults a config turns on."""
    on = {}
    if c.link_failure_prob > 0:
        on["link_failures"] = f"link_failure_prob={c.link_failure_prob}"
        if c.link_failure_mode == "asymmetric":
            on["asymmetric"] = "link_failure_mode=asymmetric"
    if c.link_burst_prob > 0:
        on["bursts"] = f"link_burst_prob={c.link_burst_prob}"
        if c.link_failure_mode == "asymmetric":
            on["asymmetric"] = "link_failure_mode=asymmetric"
    if c.dropout_prob > 0:
        on["dropouts"] = f"dropout_prob={c.dropout_prob}"
    if c.time_varying:
        on["time_varying"] = "time_varying=True"
    if c.delay_rounds > 0:
        on["delays"] = f"delay_rounds={c.delay_rounds}"
    return on


_REMEDY = {"asymmetric": "link_failure_mode=symmetric", "time_varying": "time_varying=False"}


def _accepting(test) -> str:
    names = [a.name for a in _REGISTRY.values() if test(a)]
    return ", ".join(names) if names else "none"


def check_config(c) -> None:
    """Raises ConfigError when the config asks an algorithm for something it cannot take."""
    name, scheme = resolve(c.algorithm, c.mixing)
    algo = get(name)
    shown = f"algorithm={c.algorithm}" + (" with mixing=fedavg" if name != c.algorithm else "")
    if algo.uses_graph and scheme not in algo.schemes:
        why = algo.why.get("mixing", "")
        raise ConfigError(f"mixing={c.mixing} is not accepted by {shown}"
                          + (f": {why}" if why else "")
                          + f"; allowed: auto ({algo.default_scheme}), "
                          + ", ".join(algo.schemes))
    faults = requested_faults(c)
    if c.get("channel", "ideal") == "wireless" and algo.uses_graph:   # messages may be lost
        faults.setdefault("link_failures", "channel=wireless")
        if c.link_failure_mode == "asymmetric":
            faults["asymmetric"] = "channel=wireless with link_failure_mode=asymmetric"
    for fault, setting in faults.items():
        if fault not in algo.faults:
            why = algo.why.get(fault) or algo.why.get("graph", "")
            raise ConfigError(
                f"{setting} does not apply to {shown}" + (f" ({why})" if why else "")
                + "; allowed: algorithm=" + _accepting(lambda a, f=fault: f in a.faults)
                + ", or " + ("channel=ideal" if setting.startswith("channel=") else
                             _REMEDY.get(fault, f"{setting.split('=')[0]} off")))
    if c.directed and algo.uses_graph and not algo.directed:
        raise ConfigError(f"directed=True (a directed graph) is not accepted by {shown} "
                          f"({algo.why.get('directed', 'it needs an undirected graph')}); "
                          "allowed: algorithm=" + _accepting(lambda a: a.directed))
    if c.topology == "exponential" and algo.uses_graph and not algo.directed:
        raise ConfigError(f"topology=exponential is a directed graph, not accepted by {shown} "
                          f"({algo.why.get('directed', 'it needs an undirected graph')}); "
                          "allowed: algorithm=" + _accepting(lambda a: a.directed))
    if c.momentum_after_consensus not in algo.momentum_modes:
        why = algo.why.get("momentum_after_consensus", "")
        raise ConfigError(f"momentum_after_consensus={c.momentum_after_consensus} is not "
                          f"accepted by {shown}" + (f" ({why})" if why else "")
                          + "; allowed: " + ", ".join(algo.momentum_modes))
