"""The training configuration: sections (:mod:`.sections`), reading with flat keys still understood (:mod:`.load`),
validation (:mod:`.checks`) and the generated reference page (:mod:`.reference`)."""

from rl_agents.config.checks import ENGINES, validate
from rl_agents.config.load import (LEGACY, canonical_key, config_from_dict, data_with, flatten, load_config, override,
                                   read_yaml_mapping, set_key, to_dict, upgrade)
from rl_agents.config.sections import (SECTIONS, BudgetConfig, ComputeConfig, EvalConfig, NetworkConfig, OptimConfig,
                                       PA3CConfig, RayConfig, TrackingConfig, TrainConfig)

# The paper's PA3C step as --set overrides. tune_configs/lgg_cpu.yaml and heart_cpu.yaml carry issue 23's cheaper
# recipe instead, so the benchmarks and sweeps whose recorded figures used the paper's step pin these.
PAPER_STEP = ("pa3c.t_max=10", "network.step_features=every", "network.head_stride=1")

__all__ = ["ENGINES", "LEGACY", "PAPER_STEP", "SECTIONS", "BudgetConfig", "ComputeConfig", "EvalConfig",
           "NetworkConfig", "OptimConfig", "PA3CConfig", "RayConfig", "TrackingConfig", "TrainConfig",
           "canonical_key", "config_from_dict", "data_with", "flatten", "load_config", "override", "read_yaml_mapping", "set_key", "to_dict",
           "upgrade", "validate"]
