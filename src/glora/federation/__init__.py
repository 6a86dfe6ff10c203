"""The engine-neutral federation: the server (:mod:`.server`), round planning (:mod:`.plan`),
checkpoints, data preparation (:mod:`.prepare`), the retry loop and metrics log
(:mod:`.rounds`), summaries and plots. The simulator (:mod:`glora.sim`) and the Flower apps
(:mod:`glora.flower`) both build on it; it imports neither."""
