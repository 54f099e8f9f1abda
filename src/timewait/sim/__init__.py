"""The simulator: a deterministic discrete-event engine that drives model hosts over links,
workloads on top, and a catalog of scenarios that each answer one question of the TIME_WAIT
story with numbers (see timewait.sim.scenario for the contract every scenario follows).
"""
