"""Cluster mode: the custom resources, the kopf operator that runs the host daemon's control loop on them, and
the node agent that sets the power limits the operator decides on each GPU node."""
