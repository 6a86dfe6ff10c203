"""Real deployments on Flower: the strategy, the ClientApp and ServerApp, and a local launcher.

The strategy drives the same :class:`~glora.federation.server.FederatedServer`, retry loop and
metrics log as the in-process simulator, and the ClientApp runs the same
:func:`~glora.training.train.train_client`, so a deployment and a simulation with the same config
and seed compute the same rounds. Nothing here imports the simulator (:mod:`glora.sim`).
"""
