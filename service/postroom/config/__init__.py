"""Configuration: process settings (env, .env) and the YAML file (accounts, jobs, rules)."""

from .loader import LoadedConfig, load_config
from .model import (
    AccountConfig,
    Config,
    DataSourceConfig,
    ImapConfig,
    JobConfig,
    Pop3Config,
    ScheduleConfig,
    ServerConfig,
    SmtpConfig,
)
from .settings import Settings

__all__ = [
    "AccountConfig",
    "Config",
    "DataSourceConfig",
    "ImapConfig",
    "JobConfig",
    "LoadedConfig",
    "Pop3Config",
    "ScheduleConfig",
    "ServerConfig",
    "Settings",
    "SmtpConfig",
    "load_config",
]
