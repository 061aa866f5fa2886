"""Decides accelerator, replicas, max batch and power cap per service, under SLOs and a power budget."""

from controller.optimizer.greedy import Greedy
from controller.optimizer.problem import (
    AcceleratorType,
    Assignment,
    Candidate,
    DomainRoom,
    Problem,
    ServiceDemand,
    ServiceResult,
    Solution,
)
from controller.optimizer.solvers import Exhaustive, Milp, Solver, get_solver, solve

__all__ = [
    "AcceleratorType",
    "Assignment",
    "Candidate",
    "DomainRoom",
    "Exhaustive",
    "Greedy",
    "Milp",
    "Problem",
    "ServiceDemand",
    "ServiceResult",
    "Solution",
    "Solver",
    "get_solver",
    "solve",
]
