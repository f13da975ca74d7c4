"""Names and defaults that ``--help`` shows, without importing torch.

The registries (:mod:`ddcli.methods`, :mod:`ddcli.teachers`, ...) import torch, which takes
seconds; ``ddcli --help`` must not wait for it. These constants mirror them, and
``tests/test_startup.py`` checks that they agree.
"""

from __future__ import annotations

#: ddcli.methods.list_methods()
METHODS: tuple[str, ...] = ("csdm", "dm", "lgm", "otgen", "sdm", "sfm", "tgdd")
#: ddcli.teachers.RECIPES
TEACHER_ARCHS: tuple[str, ...] = ("convnet", "convnet-bn", "resnet18", "resnet18-bn")
#: ddcli.relabel.DEFAULT_LIA_SCHEDULE as the command line spells it
LIA_SCHEDULE = "10:1,20:2,50:3"
#: ddcli.models.list_models()
MODELS: tuple[str, ...] = ("convnet", "convnet-bn", "resnet18", "resnet18-bn")
#: models of a fixed width: ``--width`` does not apply (recorded as null)
WIDTHLESS_MODELS: tuple[str, ...] = ("resnet18", "resnet18-bn")
#: the models with batch norm: they cannot be stacked and trained together (expert
#: trajectories, extractor pools)
BATCH_NORM_MODELS: tuple[str, ...] = tuple(m for m in MODELS if m.endswith("-bn"))

# the choices of distill's options (each method's config validates them too)
INITS = ("real", "noise")
AMPS = ("off", "bf16")
OPTIMIZERS = ("adamw", "sgd")
#: ddcli.losses.KERNELS
KERNELS = ("gaussian", "laplacian", "cauchy", "matern-0.5", "matern-1.5", "matern-2.5")
REDUCTIONS = ("sqrt-mean", "mean")
ALPHA_SCHEDULES = ("log-linear", "two-group", "constant")
EXTRACTORS = ("random", "pool")
STEP_MODES = ("per-class", "joint")
FLOW_DENOMINATORS = ("images", "classes")
SAMPLERS = ("ddpm", "ddim")
#: ddcli.bundle.STORAGE_DTYPES
DTYPES = ("float32", "float16")
BASELINES = ("random", "centroids")
CALIBRATIONS = ("adsa",)
#: `distill --data-cache`: the memory-mapped uint8 data cache (ddcli.datacache)
CACHE_MODES = ("auto", "on", "off")
#: `evaluate --compile` (ddcli.training.should_compile)
COMPILE_MODES = ("auto", "on", "off")
#: seeds are 63-bit: torch generators and :func:`ddcli.seeding.derive_seed` take them
MAX_SEED = 2**63 - 1
