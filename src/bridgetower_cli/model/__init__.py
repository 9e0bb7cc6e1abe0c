"""The model: the public checkpoints, finding them (hub, cache), loading one backbone with its heads, and the runtime
that encodes each image and text once and fuses pairs."""
