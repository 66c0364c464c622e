"""Stage tasks: what each stage kind computes, as objects the training engine runs (``StageTask`` shape).

Every task has ``build_trainable()`` (the module DeepSpeed wraps), ``build_frozen()`` (modules kept
outside the engine, run under ``no_grad``), ``batch_inputs(batch, frozen, generator, device)`` (data +
frozen outputs + every random draw, as tensors with a leading batch dim) and
``loss(module, inputs, dtype)`` (a deterministic scalar of the inputs and the trainable weights).
See docs/objectives.md for the map from stage kinds to tasks.
"""
