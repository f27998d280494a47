"""Finding and loading models (hub ids, folders, models directories, tiny), adapter checkpoints, LoRAs, and memory: the planner and the presets that place the models."""
