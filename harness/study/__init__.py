"""Studies: config, data for a study, the Optuna objective, workers, final evaluation."""

from harness.study.config import StudyConfig, load_config, parse_config

__all__ = ["StudyConfig", "load_config", "parse_config"]
