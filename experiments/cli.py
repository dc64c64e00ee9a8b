"""The experiment scripts' training command (:mod:`symog_jax.pipelines.cli`): flags generated
from the config dataclasses, the float-start recipe, one-line errors."""

from symog_jax.pipelines.cli import (add_config_flag, add_config_option, build_parser,
                                     check_model_width, config_from_args, main,
                                     single_run_config)

__all__ = ["add_config_flag", "add_config_option", "build_parser", "check_model_width",
           "config_from_args", "main", "single_run_config"]
